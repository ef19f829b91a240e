//! The small synchronous netlink layer that [`crate::ipset`] and [`crate::ipvs`] share: message
//! framing and attributes (pure, no I/O), and a socket that sends a request and reads its ACK or
//! errno, runs a dump until `NLMSG_DONE`, or pipelines many requests and matches the ACKs by
//! sequence number.
//!
//! Sockets are opened in the calling thread's current network namespace and stay bound to it.

use std::io;
use std::sync::Mutex;

use netlink_sys::{Socket as RawSocket, SocketAddr};

/// `nlmsg_type` of an error or ACK reply.
pub const NLMSG_ERROR: u16 = 2;
/// `nlmsg_type` that ends a multi-part dump.
pub const NLMSG_DONE: u16 = 3;

/// A request (every message we send carries it).
pub const NLM_F_REQUEST: u16 = 0x1;
/// Part of a multi-part reply.
pub const NLM_F_MULTI: u16 = 0x2;
/// Ask the kernel for an ACK.
pub const NLM_F_ACK: u16 = 0x4;
/// The dump was interrupted by a concurrent change: its content is inconsistent.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// Dump every object (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
/// Fail if the object already exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// Create the object if it does not exist.
pub const NLM_F_CREATE: u16 = 0x400;
/// In an error reply: extended-ACK attributes follow the echoed request header.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// In an error reply: only the header of the request is echoed.
const NLM_F_CAPPED: u16 = 0x100;
/// Extended-ACK attribute holding the kernel's error text.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Attribute flag: the payload is a nest of attributes.
pub const NLA_F_NESTED: u16 = 0x8000;
/// Attribute flag: the payload is in network byte order.
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// Size of `struct nlmsghdr`.
pub const HEADER_LEN: usize = 16;

/// Receive buffer asked for (with `SO_RCVBUFFORCE` when allowed): room for thousands of ACKs.
const RCVBUF: usize = 4 << 20;
/// Receive buffer per call: dumps come in datagrams of at most 32 KiB.
const RECV_BUF: usize = 64 << 10;
/// How long to wait for a reply before giving up on it.
const RECV_TIMEOUT_SECS: i64 = 30;
/// Largest datagram we send when pipelining; each one is processed by the kernel in one go.
const SEND_CHUNK: usize = 64 << 10;

/// What went wrong below the family-specific layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket itself failed.
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel answered with a negative error code (`code` is positive, an errno or a
    /// family-private code such as ipset's 4096+ range).
    #[error("kernel error {code}{}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel {
        code: i32,
        /// The extended-ACK text, when the kernel gave one.
        message: Option<String>,
    },
    /// A reply did not parse.
    #[error("malformed netlink message: {0}")]
    Malformed(String),
}

impl Error {
    /// The kernel's (positive) error code, if this is a kernel refusal.
    pub fn code(&self) -> Option<i32> {
        match self {
            Error::Kernel { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Builds one netlink message: header, family header, attributes, nests.
#[derive(Debug, Clone)]
pub struct Builder {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Builder {
    /// Starts a message of `nlmsg_type` with `flags`; sequence and port id are left 0 for the
    /// socket to fill in.
    pub fn new(nlmsg_type: u16, flags: u16) -> Builder {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&nlmsg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        Builder {
            buf,
            nests: Vec::new(),
        }
    }

    /// Appends the family header (`nfgenmsg`, `genlmsghdr`), padded to 4 bytes.
    pub fn header(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    /// Appends an attribute; `ty` may carry `NLA_F_*` flags.
    pub fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + payload.len()).expect("netlink attribute over 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// Appends a `u8` attribute.
    pub fn u8(&mut self, ty: u16, v: u8) -> &mut Self {
        self.attr(ty, &[v])
    }

    /// Appends a host-order `u16` attribute.
    pub fn u16(&mut self, ty: u16, v: u16) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// Appends a host-order `u32` attribute.
    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// Appends a network-order `u16` attribute (the type is given as is, flags included).
    pub fn be16(&mut self, ty: u16, v: u16) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// Appends a network-order `u32` attribute (the type is given as is, flags included).
    pub fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// Appends a NUL-terminated string attribute.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut payload = Vec::with_capacity(s.len() + 1);
        payload.extend_from_slice(s.as_bytes());
        payload.push(0);
        self.attr(ty, &payload)
    }

    /// Opens a nested attribute (`NLA_F_NESTED` is added); close it with [`Builder::end_nest`].
    pub fn begin_nest(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Closes the innermost open nest.
    pub fn end_nest(&mut self) -> &mut Self {
        let start = self.nests.pop().expect("end_nest without begin_nest");
        let len = u16::try_from(self.buf.len() - start).expect("netlink nest over 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// The finished message with its length filled in.
    pub fn finish(mut self) -> Vec<u8> {
        assert!(self.nests.is_empty(), "unclosed netlink nest");
        let len = u32::try_from(self.buf.len()).expect("netlink message over 4 GiB");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }

    fn pad(&mut self) {
        while self.buf.len() & 3 != 0 {
            self.buf.push(0);
        }
    }
}

/// One parsed netlink message, borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// The whole message, header included.
    pub bytes: &'a [u8],
    pub nlmsg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    /// Everything after the 16-byte header.
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// Parses exactly one message (trailing padding allowed).
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, Error> {
        let mut it = messages(buf);
        let msg = it
            .next()
            .ok_or_else(|| Error::Malformed("empty buffer".into()))??;
        Ok(msg)
    }

    /// For an `NLMSG_ERROR` message: `Ok(())` for an ACK, the kernel error otherwise.
    pub fn error_status(&self) -> Result<(), Error> {
        let p = self.payload;
        if p.len() < 4 {
            return Err(Error::Malformed("truncated nlmsgerr".into()));
        }
        let code = i32::from_ne_bytes(p[0..4].try_into().expect("4 bytes"));
        if code == 0 {
            return Ok(());
        }
        let mut message = None;
        if self.flags & NLM_F_ACK_TLVS != 0 && p.len() >= 4 + HEADER_LEN {
            let echoed = if self.flags & NLM_F_CAPPED != 0 {
                HEADER_LEN
            } else {
                u32::from_ne_bytes(p[4..8].try_into().expect("4 bytes")) as usize
            };
            if let Some(tlvs) = p.get(4 + align(echoed)..) {
                for attr in attrs(tlvs).flatten() {
                    if attr.ty == NLMSGERR_ATTR_MSG {
                        message = attr.str().ok().map(str::to_owned);
                    }
                }
            }
        }
        Err(Error::Kernel {
            code: code.checked_neg().unwrap_or(i32::MAX),
            message,
        })
    }

    /// The sequence number of the request an `NLMSG_ERROR` message answers.
    fn echoed_seq(&self) -> Option<u32> {
        self.payload
            .get(12..16)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    }
}

/// Iterates over the messages packed in one datagram.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Result<Message<'_>, Error>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < HEADER_LEN || len > rest.len() {
            rest = &[];
            return Some(Err(Error::Malformed(format!(
                "message length {len} outside the {} bytes left",
                rest.len()
            ))));
        }
        let msg = Message {
            bytes: &rest[..len],
            nlmsg_type: u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes")),
            flags: u16::from_ne_bytes(rest[6..8].try_into().expect("2 bytes")),
            seq: u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes")),
            pid: u32::from_ne_bytes(rest[12..16].try_into().expect("4 bytes")),
            payload: &rest[HEADER_LEN..len],
        };
        rest = rest.get(align(len)..).unwrap_or(&[]);
        Some(Ok(msg))
    })
}

/// One attribute, with its flags split off the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    /// The type without `NLA_F_NESTED`/`NLA_F_NET_BYTEORDER`.
    pub ty: u16,
    /// The raw flag bits that were on the type.
    pub flags: u16,
    pub payload: &'a [u8],
}

impl<'a> Attr<'a> {
    /// The payload as exactly `N` bytes.
    pub fn bytes<const N: usize>(&self) -> Result<[u8; N], Error> {
        self.fixed("fixed-size value")
    }

    fn fixed<const N: usize>(&self, what: &str) -> Result<[u8; N], Error> {
        self.payload.try_into().map_err(|_| {
            Error::Malformed(format!(
                "attribute {} should hold a {what} ({N} bytes), has {} bytes",
                self.ty,
                self.payload.len()
            ))
        })
    }

    pub fn u8(&self) -> Result<u8, Error> {
        Ok(self.fixed::<1>("u8")?[0])
    }

    pub fn u16(&self) -> Result<u16, Error> {
        Ok(u16::from_ne_bytes(self.fixed("u16")?))
    }

    pub fn u32(&self) -> Result<u32, Error> {
        Ok(u32::from_ne_bytes(self.fixed("u32")?))
    }

    pub fn be16(&self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.fixed("be16")?))
    }

    pub fn be32(&self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.fixed("be32")?))
    }

    /// A string attribute, up to its first NUL.
    pub fn str(&self) -> Result<&'a str, Error> {
        let end = self
            .payload
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.payload.len());
        std::str::from_utf8(&self.payload[..end])
            .map_err(|_| Error::Malformed(format!("attribute {} is not UTF-8", self.ty)))
    }

    /// The attributes nested in this one.
    pub fn nested(&self) -> impl Iterator<Item = Result<Attr<'a>, Error>> {
        attrs(self.payload)
    }
}

/// Iterates over the attributes in `buf`.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<Attr<'_>, Error>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes(rest[0..2].try_into().expect("2 bytes")) as usize;
        let raw = u16::from_ne_bytes(rest[2..4].try_into().expect("2 bytes"));
        if len < 4 || len > rest.len() {
            rest = &[];
            return Some(Err(Error::Malformed(format!(
                "attribute length {len} outside its message"
            ))));
        }
        let attr = Attr {
            ty: raw & NLA_TYPE_MASK,
            flags: raw & !NLA_TYPE_MASK,
            payload: &rest[4..len],
        };
        rest = rest.get(align(len)..).unwrap_or(&[]);
        Some(Ok(attr))
    })
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Overwrites the sequence number of an encoded message.
pub fn set_seq(msg: &mut [u8], seq: u32) {
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
}

/// The flags of an encoded message.
fn flags_of(msg: &[u8]) -> u16 {
    u16::from_ne_bytes(msg[6..8].try_into().expect("2 bytes"))
}

/// A netlink socket of one protocol, bound in the namespace it was opened in.
///
/// All calls lock the socket for their whole duration, so replies of concurrent callers never mix.
#[derive(Debug)]
pub struct Socket {
    sock: RawSocket,
    state: Mutex<State>,
    /// How many ACKs fit in the receive buffer, which bounds a pipelined batch.
    window: usize,
}

#[derive(Debug)]
struct State {
    seq: u32,
    buf: Vec<u8>,
}

/// Replies to one request: every data message, each as its own owned bytes.
pub type Replies = Vec<Vec<u8>>;

impl Socket {
    /// Opens a socket of `protocol` (`NETLINK_NETFILTER`, `NETLINK_GENERIC`) in the current
    /// network namespace, with a receive buffer large enough for pipelined batches.
    pub fn open(protocol: isize) -> io::Result<Socket> {
        let mut sock = RawSocket::new(protocol)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Successful ACKs echo only the header; error ACKs may carry the kernel's text.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        if nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &RCVBUF)
            .is_err()
        {
            sock.set_rx_buf_sz(RCVBUF)?;
        }
        // A request whose ACK never comes (a lost ACK, a wedged kernel) fails instead of hanging.
        nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(RECV_TIMEOUT_SECS, 0),
        )
        .map_err(io::Error::from)?;
        // The kernel reports the doubled size; each ACK costs about 1 KiB of it.
        let window = (sock.get_rx_buf_sz()? / 2048).clamp(16, 4096);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(Socket {
            sock,
            state: Mutex::new(State {
                seq: seed,
                buf: Vec::with_capacity(RECV_BUF),
            }),
            window,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one request that asks for an ACK (`NLM_F_ACK`) and waits for it.
    pub fn request(&self, msg: Vec<u8>) -> Result<(), Error> {
        self.request_replies(msg).map(|_| ())
    }

    /// Sends one request and collects its data replies until the ACK, an error, or `NLMSG_DONE`;
    /// a request without `NLM_F_ACK` and without `NLM_F_DUMP` ends at its first reply.
    pub fn request_replies(&self, mut msg: Vec<u8>) -> Result<Replies, Error> {
        let mut state = self.lock();
        state.seq = state.seq.wrapping_add(1);
        let seq = state.seq;
        set_seq(&mut msg, seq);
        let flags = flags_of(&msg);
        let single = flags & (NLM_F_ACK | NLM_F_DUMP) == 0;
        self.sock.send(&msg, 0)?;
        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let n = self.recv(&mut state)?;
            for m in messages(&state.buf[..n]) {
                let m = m?;
                if m.seq != seq {
                    continue;
                }
                match m.nlmsg_type {
                    NLMSG_ERROR => {
                        m.error_status()?;
                        return Ok(replies);
                    }
                    NLMSG_DONE => {
                        if let Some(b) = m.payload.get(0..4) {
                            let code = i32::from_ne_bytes(b.try_into().expect("4 bytes"));
                            if code < 0 {
                                return Err(Error::Kernel {
                                    code: -code,
                                    message: None,
                                });
                            }
                        }
                        if interrupted {
                            return Err(Error::Kernel {
                                code: eintr(),
                                message: Some("dump interrupted by a concurrent change".into()),
                            });
                        }
                        return Ok(replies);
                    }
                    _ => {
                        interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                        replies.push(m.bytes.to_vec());
                        if single && m.flags & NLM_F_MULTI == 0 {
                            return Ok(replies);
                        }
                    }
                }
            }
        }
    }

    /// Runs a dump request (`NLM_F_DUMP`) to `NLMSG_DONE`, retrying when a concurrent change
    /// interrupted it.
    pub fn dump(&self, msg: Vec<u8>) -> Result<Replies, Error> {
        let mut attempts = 0;
        loop {
            match self.request_replies(msg.clone()) {
                Err(Error::Kernel { code, .. }) if code == eintr() && attempts < 3 => attempts += 1,
                other => return other,
            }
        }
    }

    /// Sends many requests back to back, several per datagram, and matches the ACKs by sequence
    /// number: one result per message, in order. `NLM_F_ACK` is forced on every message.
    ///
    /// The kernel processes a datagram synchronously inside `send`, so a batch is sized to the
    /// ACKs the receive buffer holds; a failure of one request does not stop the others.
    pub fn pipeline<I>(&self, msgs: I) -> Vec<Result<(), Error>>
    where
        I: IntoIterator<Item = Vec<u8>>,
    {
        let mut state = self.lock();
        let mut results: Vec<Option<Result<(), Error>>> = Vec::new();
        let mut batch: Vec<u8> = Vec::with_capacity(SEND_CHUNK);
        let mut first = 0usize;
        let mut base = 0u32;
        for mut msg in msgs {
            if !batch.is_empty()
                && (batch.len() + msg.len() > SEND_CHUNK || results.len() - first >= self.window)
            {
                self.flush(&mut state, &mut batch, &mut results, first, base);
                first = results.len();
            }
            if batch.is_empty() {
                base = state.seq.wrapping_add(1);
            }
            state.seq = state.seq.wrapping_add(1);
            set_seq(&mut msg, state.seq);
            let flags = flags_of(&msg) | NLM_F_ACK;
            msg[6..8].copy_from_slice(&flags.to_ne_bytes());
            batch.extend_from_slice(&msg);
            results.push(None);
        }
        if !batch.is_empty() {
            self.flush(&mut state, &mut batch, &mut results, first, base);
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::Malformed(
                        "the kernel sent no ACK for this request".into(),
                    ))
                })
            })
            .collect()
    }

    /// Sends one batch (messages `first..` of `results`, sequence numbers from `base`) and
    /// collects its ACKs.
    fn flush(
        &self,
        state: &mut State,
        batch: &mut Vec<u8>,
        results: &mut [Option<Result<(), Error>>],
        first: usize,
        base: u32,
    ) {
        let count = results.len() - first;
        if let Err(e) = self.sock.send(batch, 0) {
            let kind = e.kind();
            for r in &mut results[first..] {
                *r = Some(Err(Error::Io(io::Error::new(kind, e.to_string()))));
            }
            batch.clear();
            return;
        }
        batch.clear();
        let mut pending = count;
        while pending > 0 {
            let n = match self.recv(state) {
                Ok(n) => n,
                Err(e) => {
                    for r in results[first..].iter_mut().filter(|r| r.is_none()) {
                        *r = Some(Err(Error::Malformed(format!("ACK lost: {e}"))));
                    }
                    return;
                }
            };
            for m in messages(&state.buf[..n]).flatten() {
                if m.nlmsg_type != NLMSG_ERROR {
                    continue;
                }
                let seq = m.echoed_seq().unwrap_or(m.seq);
                let idx = seq.wrapping_sub(base) as usize;
                if idx < count && results[first + idx].is_none() {
                    results[first + idx] = Some(m.error_status());
                    pending -= 1;
                }
            }
        }
    }

    /// Receives one datagram into the state buffer.
    fn recv(&self, state: &mut State) -> Result<usize, Error> {
        let n = loop {
            state.buf.clear();
            // MSG_TRUNC: the real datagram length comes back, so a truncation is detected.
            match self
                .sock
                .recv(&mut state.buf, nix::sys::socket::MsgFlags::MSG_TRUNC.bits())
            {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n > state.buf.len() {
            return Err(Error::Malformed(format!(
                "datagram of {n} bytes exceeds the {} byte buffer",
                state.buf.len()
            )));
        }
        Ok(n)
    }
}

fn eintr() -> i32 {
    nix::errno::Errno::EINTR as i32
}
