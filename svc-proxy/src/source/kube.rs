//! The Kubernetes API source: watchers (kube-rs) on Services, EndpointSlices
//! (`discovery.k8s.io/v1`) and Nodes, each object judged by [`crate::validate`] as it arrives. The
//! watchers relist after a watch error or an API server restart; a relist is one `Replace`, so
//! an object still in the API is never reported gone. Nothing is reported while the API cannot
//! be reached, so the node keeps what it has.

use super::Outbox;
use crate::metrics::Metrics;
use crate::objects::{Kind, Object, ObjectRef};
use crate::store::{Delta, SourceId};
use crate::validate::{self, Filter, Invalid, Verdict, HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};
use anyhow::Context;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, ObjectList};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use std::path::PathBuf;
use std::sync::Arc;

/// How the source finds and filters the cluster.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--master`: overrides the kubeconfig's server.
    pub master: Option<String>,
    /// This node's name (`--hostname-override`, else the hostname).
    pub node_name: String,
    pub filter: Filter,
    /// Watch every Node (pod routes need them), not only this node's.
    pub all_nodes: bool,
}

/// A client from `--kubeconfig`, `--master`, or what kube-rs infers (`$KUBECONFIG`,
/// `~/.kube/config`, then the in-cluster service account).
pub async fn client(opts: &ApiOptions) -> anyhow::Result<Client> {
    let mut config = match (&opts.kubeconfig, &opts.master) {
        (Some(path), _) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        (None, Some(master)) => kube::Config::new(
            master
                .parse()
                .with_context(|| format!("--master {master:?} is not a URL"))?,
        ),
        (None, None) => kube::Config::infer().await.context(
            "no Kubernetes API configuration: give --kubeconfig or --master, set $KUBECONFIG, \
             or run in a pod with a service account",
        )?,
    };
    if let (Some(master), Some(_)) = (&opts.master, &opts.kubeconfig) {
        config.cluster_url = master
            .parse()
            .with_context(|| format!("--master {master:?} is not a URL"))?;
    }
    Client::try_from(config).context("building the Kubernetes API client")
}

/// The label selector of the Service watch: kube-proxy's (no `service-proxy-name` label) unless
/// this proxy has a name of its own, which is then checked on each Service.
fn service_labels(filter: &Filter) -> Option<String> {
    filter
        .proxy_name
        .is_none()
        .then(|| format!("!{SERVICE_PROXY_NAME_LABEL}"))
}

fn service_config(filter: &Filter) -> watcher::Config {
    let cfg = watcher::Config::default().fields("spec.clusterIP!=None");
    match service_labels(filter) {
        Some(l) => cfg.labels(&l),
        None => cfg,
    }
}

fn slice_config() -> watcher::Config {
    watcher::Config::default().labels(&format!("!{HEADLESS_LABEL}"))
}

fn node_config(opts: &ApiOptions) -> watcher::Config {
    if opts.all_nodes {
        watcher::Config::default()
    } else {
        watcher::Config::default().fields(&format!("metadata.name={}", opts.node_name))
    }
}

/// Judges one API object. `Ok(None)`: valid, but not for us (its reference is reported gone, in
/// case an earlier version was taken).
type Judge<K> = fn(&K, &Filter) -> Result<Option<Object>, Invalid>;

fn judge_service(s: &Service, f: &Filter) -> Result<Option<Object>, Invalid> {
    Ok(match validate::service(s, f)? {
        Verdict::Accept(s) => Some(Object::Service(s)),
        Verdict::Skip(_) => None,
    })
}

fn judge_slice(s: &EndpointSlice, _: &Filter) -> Result<Option<Object>, Invalid> {
    Ok(match validate::endpoint_slice(s)? {
        Verdict::Accept(s) => Some(Object::EndpointSlice(s)),
        Verdict::Skip(_) => None,
    })
}

fn judge_node(n: &Node, _: &Filter) -> Result<Option<Object>, Invalid> {
    validate::node(n).map(|n| Some(Object::Node(n)))
}

fn reference<K: Resource<DynamicType = ()>>(kind: Kind, o: &K) -> ObjectRef {
    let namespace = match kind {
        Kind::Node => String::new(),
        _ => validate::namespace_of(o.meta()),
    };
    ObjectRef::new(kind, namespace, o.meta().name.clone().unwrap_or_default())
}

/// Starts the three watchers on `rt`; they run until the controller is gone.
pub fn spawn(
    rt: &tokio::runtime::Handle,
    client: Client,
    opts: &ApiOptions,
    out: Outbox,
    metrics: Arc<Metrics>,
) {
    let services = watcher(
        Api::<Service>::all(client.clone()),
        service_config(&opts.filter),
    );
    let slices = watcher(Api::<EndpointSlice>::all(client.clone()), slice_config());
    let nodes = watcher(Api::<Node>::all(client), node_config(opts));
    let filter = opts.filter.clone();
    rt.spawn(follow(
        services,
        Kind::Service,
        judge_service,
        filter.clone(),
        out.clone(),
        metrics.clone(),
    ));
    rt.spawn(follow(
        slices,
        Kind::EndpointSlice,
        judge_slice,
        filter.clone(),
        out.clone(),
        metrics.clone(),
    ));
    rt.spawn(follow(nodes, Kind::Node, judge_node, filter, out, metrics));
}

/// Turns one watcher's events into deltas: the objects of a (re)list are collected and reported
/// as one `Replace` when the list is complete; errors back off and are logged, and report nothing.
async fn follow<K>(
    stream: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
    kind: Kind,
    judge: Judge<K>,
    filter: Filter,
    out: Outbox,
    metrics: Arc<Metrics>,
) where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + 'static,
{
    let stream = stream.default_backoff();
    futures::pin_mut!(stream);
    let mut listing: Option<(Vec<Object>, Vec<ObjectRef>)> = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => {
                if failing {
                    log::info!("API: watching {kind}s again");
                    failing = false;
                }
                e
            }
            Err(e) => {
                // Logged once per failure streak at error level; the backoff retries.
                if !failing {
                    log::error!(
                        "API: watching {kind}s: {}; retrying with backoff",
                        describe(&e)
                    );
                    failing = true;
                } else {
                    log::debug!("API: watching {kind}s: {}", describe(&e));
                }
                metrics.api_error(kind);
                continue;
            }
        };
        let sent = match event {
            watcher::Event::Init => {
                listing = Some((Vec::new(), Vec::new()));
                true
            }
            watcher::Event::InitApply(o) => {
                let r = reference(kind, &o);
                let (objects, kept) = listing.get_or_insert_with(Default::default);
                match judge(&o, &filter) {
                    Ok(Some(obj)) => objects.push(obj),
                    Ok(None) => {}
                    Err(e) => {
                        rejected(&r, &e, &metrics);
                        kept.push(r);
                    }
                }
                true
            }
            watcher::Event::InitDone => {
                let (objects, kept) = listing.take().unwrap_or_default();
                log::info!("API: listed {} {kind}(s)", objects.len());
                out.send(Delta::Replace {
                    kind,
                    objects,
                    kept,
                })
            }
            watcher::Event::Apply(o) => {
                let r = reference(kind, &o);
                match judge(&o, &filter) {
                    Ok(Some(obj)) => out.send(Delta::Apply(obj)),
                    Ok(None) => out.send(Delta::Delete(r)),
                    Err(e) => {
                        rejected(&r, &e, &metrics);
                        true
                    }
                }
            }
            watcher::Event::Delete(o) => out.send(Delta::Delete(reference(kind, &o))),
        };
        if !sent {
            return;
        }
    }
}

fn rejected(r: &ObjectRef, e: &Invalid, metrics: &Metrics) {
    log::error!("API: {r}: {e}; skipped (its last good version, if any, stays in effect)");
    metrics.invalid_object(SourceId::Api);
}

/// A watcher error with the API server's own message (which names a missing permission).
fn describe(e: &watcher::Error) -> String {
    let inner = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        other => return other.to_string(),
    };
    match inner {
        kube::Error::Api(status) => format!("{e}: {}", status.message),
        _ => e.to_string(),
    }
}

/// Lists the cluster once (paged), as the watchers would on start: `svc-proxy check`.
pub async fn list_once(client: Client, opts: &ApiOptions) -> anyhow::Result<Vec<Delta>> {
    let mut svc_params = ListParams::default().fields("spec.clusterIP!=None");
    if let Some(l) = service_labels(&opts.filter) {
        svc_params = svc_params.labels(&l);
    }
    let slice_params = ListParams::default().labels(&format!("!{HEADLESS_LABEL}"));
    let node_params = if opts.all_nodes {
        ListParams::default()
    } else {
        ListParams::default().fields(&format!("metadata.name={}", opts.node_name))
    };
    let metrics = Metrics::default();
    Ok(vec![
        listed(
            Api::<Service>::all(client.clone()),
            svc_params,
            Kind::Service,
            judge_service,
            &opts.filter,
            &metrics,
        )
        .await?,
        listed(
            Api::<EndpointSlice>::all(client.clone()),
            slice_params,
            Kind::EndpointSlice,
            judge_slice,
            &opts.filter,
            &metrics,
        )
        .await?,
        listed(
            Api::<Node>::all(client),
            node_params,
            Kind::Node,
            judge_node,
            &opts.filter,
            &metrics,
        )
        .await?,
    ])
}

async fn listed<K>(
    api: Api<K>,
    params: ListParams,
    kind: Kind,
    judge: Judge<K>,
    filter: &Filter,
    metrics: &Metrics,
) -> anyhow::Result<Delta>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let mut objects = Vec::new();
    let mut kept = Vec::new();
    let mut params = params.limit(500);
    loop {
        let page: ObjectList<K> = api.list(&params).await.map_err(|e| match e {
            kube::Error::Api(status) => anyhow::anyhow!("listing {kind}s: {}", status.message),
            other => anyhow::anyhow!("listing {kind}s: {other}"),
        })?;
        for o in &page.items {
            let r = reference(kind, o);
            match judge(o, filter) {
                Ok(Some(obj)) => objects.push(obj),
                Ok(None) => log::debug!("{r}: skipped"),
                Err(e) => {
                    rejected(&r, &e, metrics);
                    kept.push(r);
                }
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok(Delta::Replace {
        kind,
        objects,
        kept,
    })
}
