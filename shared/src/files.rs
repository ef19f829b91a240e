//! Private state directories (attachment records, address reservations, lock files), handled
//! so that whoever can plant a file there cannot make us write elsewhere or hang.
//!
//! A [`PrivateDir`] is opened once, refusing a symlink, a non-directory, a directory owned by
//! another user or writable by group or others; every file in it is then reached relative to
//! that descriptor with `O_NOFOLLOW`: a planted symlink is refused (reads) or replaced by a
//! rename (writes), never followed; FIFOs, devices and sockets are refused without being opened
//! for I/O (`O_NONBLOCK`, then `fstat`); reads are bounded. Writes go to a temporary file created
//! exclusively (mode 0600, whatever the umask) and are renamed or linked into place.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, openat, renameat, FcntlArg, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{linkat, unlinkat, UnlinkatFlags};

/// Errors from private state directories.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A system call failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The name is a symbolic link: never followed.
    #[error("{path}: is a symbolic link (refused, never followed)")]
    Symlink { path: PathBuf },
    /// The name is a FIFO, device, socket or directory where a regular file belongs.
    #[error("{path}: is a {kind}, not a regular file (refused)")]
    NotRegular { path: PathBuf, kind: &'static str },
    /// The file is larger than the reader accepts.
    #[error("{path}: larger than {limit} bytes (refused)")]
    TooLarge { path: PathBuf, limit: usize },
    /// The directory is not one only we can write to.
    #[error("{path}: {why} (refused)")]
    Unsafe { path: PathBuf, why: String },
}

impl FilesError {
    fn io(path: &Path, e: impl Into<std::io::Error>) -> FilesError {
        FilesError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        }
    }
}

type Result<T> = std::result::Result<T, FilesError>;

fn kind_of(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => "regular file",
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFIFO => "FIFO",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFLNK => "symbolic link",
        _ => "special file",
    }
}

fn is_regular(st: &FileStat) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits()
}

/// Reads an open regular file of at most `limit` bytes.
fn read_limited(file: File, path: &Path, limit: usize) -> Result<Vec<u8>> {
    let st = fstat(&file).map_err(|e| FilesError::io(path, e))?;
    if !is_regular(&st) {
        return Err(FilesError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(&st),
        });
    }
    if usize::try_from(st.st_size).map_or(true, |n| n > limit) {
        return Err(FilesError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    let mut out = Vec::with_capacity(st.st_size as usize);
    // One byte more than allowed tells a file that grew since the fstat.
    file.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| FilesError::io(path, e))?;
    if out.len() > limit {
        return Err(FilesError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(out)
}

/// Reads a file an operator named in a config (e.g. `resolvConf`, which is often a symlink into
/// `/run`): symlinks are followed, but only a regular file of at most `limit` bytes is read, and
/// a FIFO or device is refused without blocking.
pub fn read_config_file(path: &Path, limit: usize) -> Result<Vec<u8>> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FilesError::io(path, e))?;
    read_limited(File::from(fd), path, limit)
}

/// Reads one file without following a symlink at its last component: `None` when absent.
pub fn read_file_nofollow(path: &Path, limit: usize) -> Result<Option<Vec<u8>>> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    match nix::fcntl::open(path, flags, Mode::empty()) {
        Ok(fd) => read_limited(File::from(fd), path, limit).map(Some),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ELOOP) => Err(FilesError::Symlink {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(FilesError::io(path, e)),
    }
}

/// A directory only this user can write to, held open by descriptor.
#[derive(Debug)]
pub struct PrivateDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// How a range of a lock file is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Many holders at once (`F_RDLCK`).
    Shared,
    /// One holder (`F_WRLCK`).
    Exclusive,
}

/// A lock file of a [`PrivateDir`]: whole-file `flock` (what host-local takes) and byte-range
/// open-file-description locks (`F_OFD_SETLKW`), which let one file carry one lock per
/// attachment without a file per attachment. Every lock is released when this is dropped.
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

impl LockFile {
    /// Waits for a lock on byte `offset` (`offset` below `i64::MAX`).
    pub fn lock(&self, offset: u64, kind: LockKind) -> Result<()> {
        let l_type = match kind {
            LockKind::Shared => nix::libc::F_RDLCK,
            LockKind::Exclusive => nix::libc::F_WRLCK,
        };
        let range = nix::libc::flock {
            l_type: l_type as i16,
            l_whence: nix::libc::SEEK_SET as i16,
            l_start: (offset & (i64::MAX as u64)) as i64,
            l_len: 1,
            // Open-file-description locks require 0 here.
            l_pid: 0,
        };
        loop {
            match fcntl(&self.file, FcntlArg::F_OFD_SETLKW(&range)) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(FilesError::io(&self.path, e)),
            }
        }
    }

    /// Takes the whole-file exclusive `flock` (host-local's lock), keeping the range locks.
    pub fn flock_exclusive(self) -> Result<nix::fcntl::Flock<File>> {
        let path = self.path;
        nix::fcntl::Flock::lock(self.file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| FilesError::io(&path, e))
    }
}

impl PrivateDir {
    /// Opens `path`, creating it (and missing parents, mode 0700) when absent.
    pub fn create(path: &Path) -> Result<PrivateDir> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| FilesError::io(path, e))?;
        Self::open(path)?.ok_or_else(|| FilesError::io(path, Errno::ENOENT))
    }

    /// Opens an existing directory; `None` when it does not exist.
    pub fn open(path: &Path) -> Result<Option<PrivateDir>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::open(path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            // With O_DIRECTORY the kernel reports a symlink as "not a directory".
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let symlink = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink());
                return Err(if symlink {
                    FilesError::Symlink {
                        path: path.to_path_buf(),
                    }
                } else {
                    FilesError::Unsafe {
                        path: path.to_path_buf(),
                        why: "is not a directory".into(),
                    }
                });
            }
            Err(e) => return Err(FilesError::io(path, e)),
        };
        let st = fstat(&fd).map_err(|e| FilesError::io(path, e))?;
        let me = nix::unistd::geteuid().as_raw();
        if st.st_uid != me {
            return Err(FilesError::Unsafe {
                path: path.to_path_buf(),
                why: format!(
                    "is owned by uid {}, not by uid {me} running this",
                    st.st_uid
                ),
            });
        }
        if st.st_mode & 0o022 != 0 {
            return Err(FilesError::Unsafe {
                path: path.to_path_buf(),
                why: format!(
                    "is writable by group or others (mode {:o})",
                    st.st_mode & 0o7777
                ),
            });
        }
        Ok(Some(PrivateDir {
            fd,
            path: path.to_path_buf(),
        }))
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of a file in this directory, for messages.
    pub fn file_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads `name` if it is a regular file of at most `limit` bytes: `None` when absent; a
    /// symlink or special file is an error and is not opened for I/O.
    pub fn read(&self, name: &str, limit: usize) -> Result<Option<Vec<u8>>> {
        let path = self.file_path(name);
        let st = match fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(FilesError::io(&path, e)),
        };
        if !is_regular(&st) {
            return Err(match kind_of(&st) {
                "symbolic link" => FilesError::Symlink { path },
                kind => FilesError::NotRegular { path, kind },
            });
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => read_limited(File::from(fd), &path, limit).map(Some),
            // Replaced between the two calls.
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::ELOOP) => Err(FilesError::Symlink { path }),
            Err(e) => Err(FilesError::io(&path, e)),
        }
    }

    /// Creates `temp` exclusively (mode 0600, removing a leftover of that name first) and
    /// writes `data` to it.
    fn write_temp(&self, temp: &str, data: &[u8]) -> Result<()> {
        let path = self.file_path(temp);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(0o600);
        let fd = match openat(&self.fd, temp, flags, mode) {
            Err(Errno::EEXIST) => {
                // A dead writer's file (the name carries a PID) or a plant: never written through.
                self.remove(temp)?;
                openat(&self.fd, temp, flags, mode)
            }
            other => other,
        }
        .map_err(|e| FilesError::io(&path, e))?;
        let mut file = File::from(fd);
        if let Err(e) = file.write_all(data) {
            let _ = self.remove(temp);
            return Err(FilesError::io(&path, e));
        }
        Ok(())
    }

    /// Replaces `name` with `data` atomically: written to `temp`, then renamed over `name`
    /// (a symlink at `name` is replaced, its target untouched). Readers see the old or the new
    /// content, never a part.
    pub fn write_replace(&self, name: &str, temp: &str, data: &[u8]) -> Result<()> {
        self.write_temp(temp, data)?;
        renameat(&self.fd, temp, &self.fd, name).map_err(|e| {
            let _ = self.remove(temp);
            FilesError::io(&self.file_path(name), e)
        })
    }

    /// Creates `name` holding `data` unless it exists (`false` then): written whole to `temp`,
    /// then hard-linked to `name`, so `name` is never seen empty or partial.
    pub fn write_new(&self, name: &str, temp: &str, data: &[u8]) -> Result<bool> {
        self.write_temp(temp, data)?;
        let linked = linkat(&self.fd, temp, &self.fd, name, nix::fcntl::AtFlags::empty());
        let _ = self.remove(temp);
        match linked {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(FilesError::io(&self.file_path(name), e)),
        }
    }

    /// Removes `name` (a symlink itself, not its target); `false` when absent.
    pub fn remove(&self, name: &str) -> Result<bool> {
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(FilesError::io(&self.file_path(name), e)),
        }
    }

    /// The names in the directory (UTF-8 ones; `.` and `..` left out).
    pub fn names(&self) -> Result<Vec<String>> {
        let mut dir = nix::dir::Dir::openat(
            &self.fd,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FilesError::io(&self.path, e))?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| FilesError::io(&self.path, e))?;
            if let Ok(name) = entry.file_name().to_str() {
                if name != "." && name != ".." {
                    out.push(name.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Opens (creating, mode 0600) the lock file `name`; a symlink or special file there is
    /// refused.
    pub fn lock_file(&self, name: &str) -> Result<LockFile> {
        let path = self.file_path(name);
        let flags = OFlag::O_RDWR
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let fd = openat(&self.fd, name, flags, Mode::from_bits_truncate(0o600)).map_err(
            |e| match e {
                Errno::ELOOP => FilesError::Symlink { path: path.clone() },
                e => FilesError::io(&path, e),
            },
        )?;
        let st = fstat(fd.as_fd()).map_err(|e| FilesError::io(&path, e))?;
        if !is_regular(&st) {
            return Err(FilesError::NotRegular {
                path,
                kind: kind_of(&st),
            });
        }
        Ok(LockFile {
            file: File::from(fd),
            path,
        })
    }
}

impl From<FilesError> for std::io::Error {
    fn from(e: FilesError) -> std::io::Error {
        let kind = match &e {
            FilesError::Io { source, .. } => source.kind(),
            _ => ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "nodenet-files-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn a_planted_symlink_is_replaced_never_written_through() {
        let base = tmp("symlink");
        let victim = base.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dir = PrivateDir::create(&base.join("net")).unwrap();
        for name in ["record.json", "temp.1"] {
            std::os::unix::fs::symlink(&victim, dir.file_path(name)).unwrap();
        }
        dir.write_replace("record.json", "temp.1", b"ours").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(
            std::fs::read(dir.file_path("record.json")).unwrap(),
            b"ours"
        );
        assert!(std::fs::symlink_metadata(dir.file_path("temp.1")).is_err());
        // Reading a symlink is refused, not followed.
        std::os::unix::fs::symlink(&victim, dir.file_path("10.0.0.2")).unwrap();
        assert!(matches!(
            dir.read("10.0.0.2", 100),
            Err(FilesError::Symlink { .. })
        ));
        // A symlink as the lock file is refused.
        std::os::unix::fs::symlink(&victim, dir.file_path("lock")).unwrap();
        assert!(matches!(
            dir.lock_file("lock"),
            Err(FilesError::Symlink { .. })
        ));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let base = tmp("fifo");
        let dir = PrivateDir::create(&base.join("net")).unwrap();
        nix::unistd::mkfifo(&dir.file_path("10.0.0.3"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            dir.read("10.0.0.3", 100),
            Err(FilesError::NotRegular { kind: "FIFO", .. })
        ));
        nix::unistd::mkfifo(&base.join("resolv"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            read_config_file(&base.join("resolv"), 100),
            Err(FilesError::NotRegular { kind: "FIFO", .. })
        ));
        assert!(matches!(
            read_config_file(Path::new("/dev/zero"), 100),
            Err(FilesError::NotRegular {
                kind: "character device",
                ..
            })
        ));
        std::fs::create_dir(dir.file_path("sub")).unwrap();
        assert!(matches!(
            dir.read("sub", 100),
            Err(FilesError::NotRegular {
                kind: "directory",
                ..
            })
        ));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn reads_are_bounded() {
        let base = tmp("bound");
        let dir = PrivateDir::create(&base.join("net")).unwrap();
        dir.write_replace("big", "t", &[b'x'; 101]).unwrap();
        assert!(matches!(
            dir.read("big", 100),
            Err(FilesError::TooLarge { limit: 100, .. })
        ));
        assert_eq!(dir.read("big", 101).unwrap().unwrap().len(), 101);
        assert_eq!(dir.read("absent", 1).unwrap(), None);
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn unsafe_directories_are_refused() {
        let base = tmp("dirs");
        let real = base.join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, base.join("link")).unwrap();
        assert!(matches!(
            PrivateDir::create(&base.join("link")),
            Err(FilesError::Symlink { .. })
        ));
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            PrivateDir::open(&real),
            Err(FilesError::Unsafe { .. })
        ));
        let other = base.join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&other, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        assert!(matches!(
            PrivateDir::open(&other),
            Err(FilesError::Unsafe { .. })
        ));
        std::fs::write(base.join("file"), b"").unwrap();
        assert!(matches!(
            PrivateDir::open(&base.join("file")),
            Err(FilesError::Unsafe { .. })
        ));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn files_are_private_under_any_umask() {
        let base = tmp("umask");
        let old = nix::sys::stat::umask(Mode::empty());
        let dir = PrivateDir::create(&base.join("a/b"));
        let written = dir.as_ref().map(|d| {
            d.write_replace("f", "f.tmp", b"x").unwrap();
            d.write_new("g", "g.tmp", b"y").unwrap();
            d.lock_file("lock").unwrap();
        });
        nix::sys::stat::umask(old);
        written.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&base.join("a")), 0o700);
        assert_eq!(mode(&base.join("a/b")), 0o700);
        for f in ["f", "g", "lock"] {
            assert_eq!(mode(&base.join("a/b").join(f)), 0o600, "{f}");
        }
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn write_new_never_replaces() {
        let base = tmp("new");
        let dir = PrivateDir::create(&base.join("n")).unwrap();
        assert!(dir.write_new("10.0.0.2", ".t", b"a").unwrap());
        assert!(!dir.write_new("10.0.0.2", ".t", b"b").unwrap());
        assert_eq!(dir.read("10.0.0.2", 10).unwrap().unwrap(), b"a");
        let mut names = dir.names().unwrap();
        names.sort();
        assert_eq!(names, vec!["10.0.0.2"]);
        std::fs::remove_dir_all(base).unwrap();
    }
}
