//! A token store in files, shared by the processes of one host (feature `file-store`).

use std::fmt;
#[cfg(not(unix))]
use std::fs::OpenOptions;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::BoxFuture;
use crate::error::StoreError;
use crate::metrics::LeaseWait;
use crate::secret::RefreshToken;
use crate::store::{RefreshLease, StoredTokens, TokenStore};

/// The longest file name this store makes for a namespace (before `.json` / `.lock`).
const MAX_NAME: usize = 120;

/// How long a save or compare-and-delete waits for another's write lock (held for a few file
/// operations only) before failing with a transient error.
const WRITE_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Tokens in JSON files, one per namespace, with an advisory-lock refresh lease.
///
/// Use it when several processes on one host share a session (workers of one service, CLI
/// invocations); use a network store (`client-auth-redis`) when they run on several hosts.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use client_auth::{FileStore, OAuthProvider};
///
/// # fn main() -> Result<(), client_auth::Error> {
/// let store = FileStore::new("/var/lib/my-service/tokens")
///     .lock_wait_timeout(Duration::from_secs(40));
/// let provider = OAuthProvider::refresh_token_grant("https://auth.example.com/token")
///     .client_id("my-client")
///     .store(Arc::new(store), "user-42")
///     .build()?;
/// # let _ = provider;
/// # Ok(()) }
/// ```
///
/// What a provider saves there, any process of the host loads:
///
/// ```
/// use client_auth::{FileStore, RefreshToken, StoredTokens, TokenStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = std::env::temp_dir().join(format!("client-auth-doc-{}", std::process::id()));
/// let tokens = StoredTokens {
///     refresh_token: Some(RefreshToken::new("rt-1")),
///     ..StoredTokens::default()
/// };
/// FileStore::new(&dir).save("user-42", &tokens).await?;
/// let loaded = FileStore::new(&dir).load("user-42").await?.expect("saved above");
/// assert_eq!(loaded.refresh_token.map(|t| t.expose_secret().to_owned()), Some("rt-1".into()));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
///
/// The lease waits for another holder by polling the lock (with backoff), at most
/// [`lock_wait_timeout`](Self::lock_wait_timeout); by default the lease's own ttl plus 15 s, so
/// that waiters outwait a living holder whose token request takes up to the provider's default
/// 10 s timeout.
/// The ttl itself is not enforced: the lock is released when its holder finishes or dies, and a
/// living holder is bounded by the token-endpoint timeout. For the same reason
/// [`RefreshLease::renew`] is the default no-op: the operating system holds the lock for as
/// long as its holder lives.
///
/// Compare-and-delete ([`clear_if_refresh_token`](TokenStore::clear_if_refresh_token)) is
/// atomic against the saves of every process on the host: both take a short per-namespace
/// write lock (`<namespace>.write.lock`).
///
/// A file that cannot be read or parsed is a permanent [`StoreError`]; it is never deleted or
/// overwritten by a load, so it can be inspected. Errors name the file, never its content.
///
/// # Permissions
///
/// Whoever can change the directory or a file in it can read the session (and replace it with
/// their own), so the store insists on private ones. On unix, in every operation:
///
/// - **The directory must be owned by the process's effective user and have no group or other
///   write bit** (`0700` or `0755` pass; `0770`, `0777` and the sticky `1777` of `/tmp` do
///   not). Otherwise the operation fails with a permanent [`StoreError`] that names the
///   directory, its mode or owner, and what to change. The store creates a missing directory
///   (and missing parents) with mode `0700`. The path may reach the directory through a
///   symbolic link. Each operation opens the directory once (following such a link), checks
///   the directory it opened, and then makes every file operation relative to that handle
///   (`openat`, `renameat`, `unlinkat`, `fstatat`): the directory that passed the checks is
///   the one read and written, even if the path is switched to another directory meanwhile.
///   Its ancestors, and access granted by ACLs, are not checked: keep them writable by
///   trusted users only.
/// - **Files are never followed through a symbolic link.** The token file, the lease lock
///   (`<namespace>.lock`), the write lock (`<namespace>.write.lock`) and the temporary files
///   are opened with `O_NOFOLLOW`, so a symbolic link planted at one of those names is refused
///   (a permanent error naming the file) and its target is neither read nor created. Anything
///   but a regular file there is refused too. A save replaces a symbolic link at the token
///   file's name by renaming over it, without writing through it.
/// - **An opened file must be owned by the process's effective user and have no group or
///   other write bit**, like the directory: a token file or lock file that others may write
///   (say `0666`) or that another user owns is refused with a permanent [`StoreError`] that
///   names the file (never its content) and is left in place. Replace it with a save, or
///   remove it or fix its mode and owner by hand.
/// - **A save leaves a private token file.** It writes a new file, created with mode `0600`
///   and owned by the process's user, and renames it over the old one, so whatever the mode
///   or owner of the file it replaces (a `0644` copy put there by hand, say), the token file
///   is `0600` afterwards; a hard link to the old file keeps the old content. Lock files are
///   created with mode `0600` and kept.
///
/// On Windows none of the directory's and files' ACLs and owners are checked (keep the
/// directory under the user's profile, which is private by default), and there is no
/// directory handle: files are opened, renamed and removed by path, after the directory check,
/// so a path switched to another directory in between is followed. A symbolic link is refused
/// by a check just before the file is opened: a link created between that check and the open
/// would be followed (creating one needs the symbolic-link privilege or developer mode).
///
/// One JSON file per namespace ([`StoredTokens::to_json`]) in one directory. Writes are
/// atomic: a temporary file in the same directory is written, flushed to disk, renamed over the
/// old file, and the directory is flushed, so a reader never sees half a file and a crash never
/// leaves a torn one. Files are created with mode `0600` and the directory (when this store
/// creates it) with `0700` on unix.
///
/// The refresh lease is an advisory lock (`flock` on unix, `LockFileEx` on Windows) on a
/// separate `<name>.lock` file, held across "re-read, refresh if still needed, write": several
/// processes refresh one rotating refresh token once. The operating system drops the lock when
/// its holder dies, so a crashed holder never blocks the others, and holds it for as long as
/// the holder lives: the lease has no ttl to extend, and [`RefreshLease::renew`] is the
/// trait's default, which does nothing.
///
/// [`clear_if_refresh_token`](TokenStore::clear_if_refresh_token) (compare-and-delete) is
/// atomic across the processes of the host: it reads, compares and removes the file under a
/// second advisory lock, on `<name>.write.lock`, which every save also takes around its rename.
/// So a refresh token that another process saved meanwhile is never removed. That lock is held
/// for a few file operations only, never across a token request, and is separate from the
/// lease, so a process holding the lease can call it.
///
/// Every operation opens the directory once, checks the opened directory (owned by the
/// effective uid, no group or other write bit, on unix) and works relative to that handle
/// only; it opens every file without following a symbolic link (`O_NOFOLLOW` on unix) and
/// refuses a file that others could write: see "Permissions" on [`FileStore`].
#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    lock_wait: Option<Duration>,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.dir)
            .field("lock_wait", &self.lock_wait)
            .finish()
    }
}

impl FileStore {
    /// A store keeping its files in `dir` (created on the first write when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            lock_wait: None,
        }
    }

    /// How long [`lock_refresh`](TokenStore::lock_refresh) waits for another process's lease
    /// before it fails with a transient error (default: the requested ttl plus 15 s).
    pub fn lock_wait_timeout(mut self, timeout: Duration) -> Self {
        self.lock_wait = Some(timeout);
        self
    }

    /// The directory the files live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding the tokens of `namespace`.
    ///
    /// The namespace is turned into a file name: ASCII letters, digits, `-` and `_` are kept,
    /// every other byte becomes `%XX`; a long name is cut and suffixed with a hash, so two
    /// namespaces never share a file.
    pub fn path_for(&self, namespace: &str) -> PathBuf {
        self.dir.join(token_file_name(namespace))
    }
}

/// The token file's name for `namespace`.
fn token_file_name(namespace: &str) -> String {
    format!("{}.json", file_name(namespace))
}

/// The lease lock's file name for `namespace`.
fn lock_file_name(namespace: &str) -> String {
    format!("{}.lock", file_name(namespace))
}

/// The lock serialising the renames and removals of compare-and-delete with saves. File names
/// of namespaces hold no `.`, so no namespace's files collide with it.
fn write_lock_file_name(namespace: &str) -> String {
    format!("{}.write.lock", file_name(namespace))
}

/// `namespace` as a file name (without extension).
fn file_name(namespace: &str) -> String {
    let mut name = String::with_capacity(namespace.len() + 8);
    for b in namespace.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    if name.is_empty() {
        name.push_str("%EMPTY");
    }
    if name.len() > MAX_NAME {
        // FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
        let hash = namespace.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let mut cut = MAX_NAME - 17;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
        name.push_str(&format!("~{hash:016x}"));
    }
    name
}

/// A store error for `e`, which stays reachable as its `source()`.
fn io_error(what: &str, path: &Path, e: io::Error) -> StoreError {
    let message = format!("{what} {}: {e}", path.display());
    let error = match e.kind() {
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            StoreError::transient(message)
        }
        _ => StoreError::permanent(message),
    };
    error.with_source(e)
}

/// Runs blocking file I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(StoreError::transient(format!(
            "the file store's blocking task failed: {e}"
        ))),
    }
}

/// The store's directory, opened once per operation and checked through that handle (see
/// "Permissions" on [`FileStore`]).
///
/// On unix every file operation of the store operation is made relative to the handle
/// (`openat`, `renameat`, `unlinkat`, `fstatat`), so the directory that passed the checks is
/// the one used, even if its path is switched to another directory meanwhile (a symbolic link
/// flipped). On Windows it holds the path only, and files are opened by path.
struct Dir {
    path: PathBuf,
    #[cfg(unix)]
    fd: rustix::fd::OwnedFd,
}

/// What makes a directory or file that others could change unusable (unix).
#[cfg(unix)]
enum Foreign {
    /// A group or other write bit, with the permission bits in octal.
    Writable(String),
    /// Owned by `owner`, not by the effective uid `euid`.
    Owner { owner: u32, euid: u32 },
}

/// Whether the opened directory or file described by `stat` is writable by its group or by
/// others, or not owned by the effective uid.
#[cfg(unix)]
fn foreign(stat: &rustix::fs::Stat) -> Option<Foreign> {
    use rustix::fs::Mode;
    let mode = Mode::from_raw_mode(stat.st_mode);
    if mode.intersects(Mode::WGRP | Mode::WOTH) {
        return Some(Foreign::Writable(format!("{:04o}", mode.bits())));
    }
    let euid = rustix::process::geteuid().as_raw();
    let owner = stat.st_uid;
    (owner != euid).then_some(Foreign::Owner { owner, euid })
}

impl Dir {
    /// Opens the directory at `path` and checks the opened directory: on unix, owned by the
    /// effective uid, without group or other write permission. `None` when it does not exist.
    fn open(path: &Path) -> Result<Option<Self>, StoreError> {
        Self::open_checked(path, false)
    }

    /// [`open`](Self::open), making a missing directory (and missing parents, mode `0700`)
    /// first.
    fn create(path: &Path) -> Result<Self, StoreError> {
        create_dir(path)?;
        Self::open_checked(path, true)?.ok_or_else(|| {
            StoreError::permanent(format!(
                "the token directory {} disappeared after it was created",
                path.display()
            ))
        })
    }

    fn open_checked(path: &Path, created: bool) -> Result<Option<Self>, StoreError> {
        #[cfg(unix)]
        {
            use rustix::fs::{Mode, OFlags};
            // Follows a symbolic link to the directory itself, by design: what the path
            // resolves to now is what the checks below see and every later step uses.
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let fd = match rustix::fs::open(path, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(e) if !created && e == rustix::io::Errno::NOENT => return Ok(None),
                Err(e) => {
                    return Err(io_error(
                        "could not open the token directory",
                        path,
                        e.into(),
                    ));
                }
            };
            let stat = rustix::fs::fstat(&fd)
                .map_err(|e| io_error("could not inspect the token directory", path, e.into()))?;
            match foreign(&stat) {
                Some(Foreign::Writable(mode)) => Err(StoreError::permanent(format!(
                    "refused the token directory {}: it is writable by its group or by others \
                     (mode {mode}), so they could read or replace the tokens; make it private \
                     (chmod go-w, or 0700) or use another directory",
                    path.display()
                ))),
                Some(Foreign::Owner { owner, euid }) => Err(StoreError::permanent(format!(
                    "refused the token directory {}: it is owned by uid {owner}, not by this \
                     process's user (uid {euid}), who could read or replace the tokens; chown \
                     it or use another directory",
                    path.display()
                ))),
                None => Ok(Some(Self {
                    path: path.to_owned(),
                    fd,
                })),
            }
        }
        #[cfg(not(unix))]
        {
            let meta = match fs::metadata(path) {
                Ok(meta) => meta,
                Err(e) if !created && e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_error("could not inspect the token directory", path, e)),
            };
            if !meta.is_dir() {
                return Err(StoreError::permanent(format!(
                    "the token directory {} is not a directory",
                    path.display()
                )));
            }
            Ok(Some(Self {
                path: path.to_owned(),
            }))
        }
    }

    /// The path of the file `name` in this directory, for messages (and for the file
    /// operations on Windows).
    fn path_of(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens the file `name` in this directory without following a symbolic link, creating it
    /// with mode `0600` (unix) when `access` creates; refuses anything but a regular file and,
    /// on unix, a file writable by its group or by others or owned by another user.
    fn open_file(&self, name: &str, access: Access) -> io::Result<File> {
        #[cfg(unix)]
        {
            use rustix::fs::{AtFlags, FileType, Mode, OFlags};
            use rustix::io::Errno;
            let access = match access {
                Access::Read => OFlags::RDONLY,
                Access::Lock => OFlags::RDWR | OFlags::CREATE,
                Access::CreateNew => OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            };
            // `O_NONBLOCK`: a FIFO planted at the name must not hang the open; it is refused
            // below like anything else that is not a regular file (the flag does not change
            // reads, writes or `flock` on regular files).
            let flags = access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(&self.fd, name, flags, Mode::RUSR | Mode::WUSR).map_err(
                |e| {
                    // `O_NOFOLLOW` on a symbolic link: `ELOOP` (`EMLINK` on FreeBSD and NetBSD).
                    let refused = (e == Errno::LOOP || e == Errno::MLINK)
                        && rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink);
                    if refused {
                        symlink_refused()
                    } else {
                        io::Error::from(e)
                    }
                },
            )?;
            let stat = rustix::fs::fstat(&fd)?;
            if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                return Err(io::Error::other("it is not a regular file"));
            }
            match foreign(&stat) {
                Some(Foreign::Writable(mode)) => Err(io::Error::other(format!(
                    "refused: it is writable by its group or by others (mode {mode}), so they \
                     could replace the tokens; remove it or make it private (chmod go-w)"
                ))),
                Some(Foreign::Owner { owner, euid }) => Err(io::Error::other(format!(
                    "refused: it is owned by uid {owner}, not by this process's user \
                     (uid {euid}), who could replace the tokens; remove it"
                ))),
                None => Ok(File::from(fd)),
            }
        }
        #[cfg(not(unix))]
        {
            let path = self.path_of(name);
            if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(symlink_refused());
            }
            let mut options = OpenOptions::new();
            match access {
                Access::Read => options.read(true),
                Access::Lock => options.read(true).write(true).create(true),
                Access::CreateNew => options.write(true).create_new(true),
            };
            let file = options.open(&path)?;
            if !file.metadata()?.is_file() {
                return Err(io::Error::other("it is not a regular file"));
            }
            Ok(file)
        }
    }

    /// Whether anything (a symbolic link included) is at `name`.
    fn exists(&self, name: &str) -> io::Result<bool> {
        #[cfg(unix)]
        let found = rustix::fs::statat(&self.fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map(drop)
            .map_err(io::Error::from);
        #[cfg(not(unix))]
        let found = fs::symlink_metadata(self.path_of(name)).map(drop);
        match found {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Renames `from` to `to`, both in this directory, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        #[cfg(unix)]
        return rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(io::Error::from);
        #[cfg(not(unix))]
        return fs::rename(self.path_of(from), self.path_of(to));
    }

    /// Removes `name` (a symbolic link there, not its target).
    fn remove(&self, name: &str) -> io::Result<()> {
        #[cfg(unix)]
        return rustix::fs::unlinkat(&self.fd, name, rustix::fs::AtFlags::empty())
            .map_err(io::Error::from);
        #[cfg(not(unix))]
        return fs::remove_file(self.path_of(name));
    }

    /// Flushes a directory entry change (rename, unlink) to disk; a no-op on Windows, where
    /// directories cannot be opened.
    fn sync(&self) -> Result<(), StoreError> {
        #[cfg(unix)]
        rustix::fs::fsync(&self.fd)
            .map_err(|e| io_error("could not flush the token directory", &self.path, e.into()))?;
        Ok(())
    }
}

/// How [`Dir::open_file`] opens a file.
#[derive(Clone, Copy)]
enum Access {
    /// Reading a file that exists (the token file).
    Read,
    /// Reading and writing, created when missing (a lock file).
    Lock,
    /// Writing a new file; one already at the name is an error (a temporary file).
    CreateNew,
}

fn read(dir: &Dir, name: &str) -> Result<Option<StoredTokens>, StoreError> {
    let path = dir.path_of(name);
    let mut file = match dir.open_file(name, Access::Read) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("could not read the token file", &path, e)),
    };
    // Sized up front: a growing buffer would leave copies of the tokens in freed memory.
    let len = file
        .metadata()
        .map(|m| usize::try_from(m.len()).unwrap_or(0))
        .unwrap_or(0);
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(len.saturating_add(1)));
    io::Read::read_to_end(&mut file, &mut bytes)
        .map_err(|e| io_error("could not read the token file", &path, e))?;
    StoredTokens::from_json(&bytes).map(Some).map_err(|e| {
        StoreError::permanent(format!(
            "the token file {} is corrupt and was left in place: {e}",
            path.display()
        ))
    })
}

fn create_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| io_error("could not create the token directory", dir, e))
}

fn symlink_refused() -> io::Error {
    io::Error::other("it is a symbolic link, which the file store never follows; remove it")
}

/// An exclusive advisory lock on a write-lock file, released when dropped (closing the file
/// releases it, also when the process dies).
struct WriteLock {
    _file: File,
}

/// Takes the write lock `name` in `dir`, polling (on this blocking thread) for at most
/// [`WRITE_LOCK_WAIT`]: its holders keep it for a few file operations, so a longer wait means
/// a stuck holder, which must not hang this thread for ever.
fn write_lock(dir: &Dir, name: &str) -> Result<WriteLock, StoreError> {
    let file = dir
        .open_file(name, Access::Lock)
        .map_err(|e| io_error("could not open the write lock file", &dir.path_of(name), e))?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(1);
    loop {
        // Fully qualified: std's `File::try_lock` (Rust 1.89) would shadow it.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => return Ok(WriteLock { _file: file }),
            Err(fs4::TryLockError::WouldBlock) => {}
            Err(fs4::TryLockError::Error(e)) => {
                return Err(io_error("could not lock", &dir.path_of(name), e));
            }
        }
        let waited = started.elapsed();
        if waited >= WRITE_LOCK_WAIT {
            return Err(StoreError::transient(format!(
                "timed out after {} ms waiting for the write lock {}",
                waited.as_millis(),
                dir.path_of(name).display()
            )));
        }
        std::thread::sleep(delay.min(WRITE_LOCK_WAIT - waited));
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

/// The file names of one namespace's files.
struct Names {
    tokens: String,
    write_lock: String,
}

impl Names {
    fn new(namespace: &str) -> Self {
        Self {
            tokens: token_file_name(namespace),
            write_lock: write_lock_file_name(namespace),
        }
    }
}

/// Sets its flag when dropped: the future it lives in was dropped before it finished.
struct Abandon(Arc<AtomicBool>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn write_atomic(
    dir: &Path,
    names: &Names,
    contents: &[u8],
    abandoned: &AtomicBool,
) -> Result<(), StoreError> {
    let dir = Dir::create(dir)?;
    let path = dir.path_of(&names.tokens);
    let tmp = format!(
        ".{}.{}.{:016x}.tmp",
        names.tokens,
        std::process::id(),
        fastrand::u64(..)
    );
    let written = (|| {
        let mut file = dir.open_file(&tmp, Access::CreateNew)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = dir.remove(&tmp);
        return Err(io_error("could not write the token file", &path, e));
    }
    // Only the rename is serialised with compare-and-delete: it is what replaces the tokens.
    let renamed = write_lock(&dir, &names.write_lock).and_then(|_lock| {
        if abandoned.load(Ordering::SeqCst) {
            return Err(StoreError::transient(
                "the token write was abandoned by its caller before it could land",
            ));
        }
        dir.rename(&tmp, &names.tokens)
            .map_err(|e| io_error("could not write the token file", &path, e))
    });
    if let Err(e) = renamed {
        let _ = dir.remove(&tmp);
        return Err(e);
    }
    dir.sync()
}

/// Compare-and-delete under the write lock: removes the token file only while it holds
/// `refresh_token`.
fn clear_if_refresh_token(
    dir: &Path,
    names: &Names,
    refresh_token: &RefreshToken,
) -> Result<bool, StoreError> {
    // Nothing stored: nothing to compare, and no lock file to create.
    let Some(dir) = Dir::open(dir)? else {
        return Ok(false);
    };
    if let Ok(false) = dir.exists(&names.tokens) {
        return Ok(false);
    }
    let removed = {
        let _lock = write_lock(&dir, &names.write_lock)?;
        match read(&dir, &names.tokens)? {
            Some(stored) if stored.refresh_token.as_ref() == Some(refresh_token) => {
                match dir.remove(&names.tokens) {
                    Ok(()) => true,
                    // A `clear` (which takes no lock) removed it first.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => {
                        return Err(io_error(
                            "could not remove the token file",
                            &dir.path_of(&names.tokens),
                            e,
                        ));
                    }
                }
            }
            _ => false,
        }
    };
    if removed {
        dir.sync()?;
    }
    Ok(removed)
}

impl TokenStore for FileStore {
    fn load<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredTokens>, StoreError>> {
        let dir = self.dir.clone();
        let name = token_file_name(namespace);
        Box::pin(blocking(move || match Dir::open(&dir)? {
            Some(dir) => read(&dir, &name),
            None => Ok(None),
        }))
    }

    fn save<'a>(
        &'a self,
        namespace: &'a str,
        tokens: &'a StoredTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let dir = self.dir.clone();
        let names = Names::new(namespace);
        let json = tokens.to_json();
        // A caller that gave up (its timeout) must not have the write land later, after it
        // went on: the blocking thread cannot be stopped, so it checks before replacing.
        let abandoned = Arc::new(AtomicBool::new(false));
        let on_drop = Abandon(Arc::clone(&abandoned));
        Box::pin(async move {
            // Dropped with this future: before the write finished, that abandons it.
            let _on_drop = on_drop;
            blocking(move || {
                write_atomic(&dir, &names, json.expose_secret().as_bytes(), &abandoned)
            })
            .await
        })
    }

    fn clear<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let dir = self.dir.clone();
        let name = token_file_name(namespace);
        Box::pin(blocking(move || {
            let Some(dir) = Dir::open(&dir)? else {
                return Ok(());
            };
            // Removing a symbolic link at the name removes the link, not its target.
            match dir.remove(&name) {
                Ok(()) => dir.sync(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(
                    "could not remove the token file",
                    &dir.path_of(&name),
                    e,
                )),
            }
        }))
    }

    fn clear_if_refresh_token<'a>(
        &'a self,
        namespace: &'a str,
        refresh_token: &'a RefreshToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let dir = self.dir.clone();
        let names = Names::new(namespace);
        let refresh_token = refresh_token.clone();
        Box::pin(blocking(move || {
            clear_if_refresh_token(&dir, &names, &refresh_token)
        }))
    }

    fn lock_refresh<'a>(
        &'a self,
        namespace: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Box<dyn RefreshLease>>, StoreError>> {
        let dir = self.dir.clone();
        let name = lock_file_name(namespace);
        let path = self.dir.join(&name);
        let wait = self
            .lock_wait
            .unwrap_or_else(|| ttl.saturating_add(Duration::from_secs(15)));
        Box::pin(async move {
            let started = Instant::now();
            let failed = |e: StoreError| {
                crate::metrics::lease_wait("file", LeaseWait::Error, started.elapsed());
                e
            };
            let file = blocking(move || {
                let dir = Dir::create(&dir)?;
                dir.open_file(&name, Access::Lock)
                    .map_err(|e| io_error("could not open the lock file", &dir.path_of(&name), e))
            })
            .await
            .map_err(failed)?;
            let mut delay = Duration::from_millis(2);
            let mut file = Some(file);
            loop {
                let Some(f) = file.take() else {
                    return Err(failed(StoreError::transient("the lock file was lost")));
                };
                let lock_path = path.clone();
                let (f, locked) = blocking(move || {
                    // Fully qualified: std's `File::try_lock` (Rust 1.89) would shadow it.
                    match fs4::FileExt::try_lock(&f) {
                        Ok(()) => Ok((f, true)),
                        Err(fs4::TryLockError::WouldBlock) => Ok((f, false)),
                        Err(fs4::TryLockError::Error(e)) => {
                            Err(io_error("could not lock", &lock_path, e))
                        }
                    }
                })
                .await
                .map_err(failed)?;
                if locked {
                    tracing::trace!(path = %path.display(), "file refresh lease taken");
                    crate::metrics::lease_wait("file", LeaseWait::Acquired, started.elapsed());
                    return Ok(Some(
                        Box::new(FileLease { file: Some(f) }) as Box<dyn RefreshLease>
                    ));
                }
                file = Some(f);
                let waited = started.elapsed();
                if waited >= wait {
                    crate::metrics::lease_wait("file", LeaseWait::Timeout, waited);
                    return Err(StoreError::transient(format!(
                        "timed out after {} ms waiting for the refresh lease {}",
                        waited.as_millis(),
                        path.display()
                    )));
                }
                let jittered = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
                tokio::time::sleep(jittered.min(wait - waited)).await;
                delay = (delay * 2).min(Duration::from_millis(50));
            }
        })
    }
}

/// The held advisory lock. Dropping it closes the file, which releases the lock too.
struct FileLease {
    file: Option<File>,
}

impl fmt::Debug for FileLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLease").finish_non_exhaustive()
    }
}

impl RefreshLease for FileLease {
    fn release(mut self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
        let file = self.file.take();
        Box::pin(blocking(move || {
            if let Some(file) = file {
                // Closing the file releases the lock even if the explicit unlock fails.
                fs4::FileExt::unlock(&file).map_err(|e| {
                    StoreError::transient(format!("could not unlock the lock file: {e}"))
                })?;
            }
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::secret::{AccessToken, RefreshToken};

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "client-auth-file-store-{tag}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn tokens(marker: &str) -> StoredTokens {
        StoredTokens {
            access_token: Some(AccessToken::new(format!("at-{marker}"))),
            refresh_token: Some(RefreshToken::new(format!("rt-{marker}"))),
            // whole milliseconds, the precision the JSON keeps
            expires_at: std::time::UNIX_EPOCH.checked_add(Duration::from_millis(1_900_000_000_000)),
            scope: None,
            issued_at: None,
            dpop_jkt: None,
        }
    }

    #[test]
    fn namespaces_become_distinct_safe_file_names() {
        assert_eq!(file_name("user-42_a"), "user-42_a");
        assert_eq!(file_name("../etc/passwd"), "%2E%2E%2Fetc%2Fpasswd");
        assert_eq!(file_name("a:b"), "a%3Ab");
        assert_eq!(file_name(""), "%EMPTY");
        assert_ne!(file_name("%EMPTY"), file_name(""));
        let long_a = "a".repeat(500);
        let long_b = format!("{}b", "a".repeat(499));
        assert!(file_name(&long_a).len() <= MAX_NAME);
        assert_ne!(file_name(&long_a), file_name(&long_b));
        assert_eq!(file_name("é").len(), 6);
    }

    #[tokio::test]
    async fn saves_loads_and_clears_one_file_per_namespace() {
        let dir = temp_dir("roundtrip");
        let store = FileStore::new(&dir);
        assert!(store.load("a").await.unwrap().is_none());
        store.save("a", &tokens("A")).await.unwrap();
        store.save("b/c", &tokens("B")).await.unwrap();
        assert_eq!(store.load("a").await.unwrap(), Some(tokens("A")));
        assert!(store.path_for("b/c").exists());
        store.clear("a").await.unwrap();
        store.clear("a").await.unwrap();
        assert!(store.load("a").await.unwrap().is_none());
        assert!(store.load("b/c").await.unwrap().is_some());
        // no temporary files are left behind
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_io_failure_is_the_store_errors_source() {
        let dir = temp_dir("io-source");
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a-file");
        fs::write(&file, b"not a directory").unwrap();
        let store = FileStore::new(file.join("tokens"));
        let error = store.save("a", &tokens("A")).await.unwrap_err();
        let source = std::error::Error::source(&error).expect("the I/O error");
        assert!(source.downcast_ref::<io::Error>().is_some(), "{source:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn files_are_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("mode");
        let store = FileStore::new(&dir);
        store.save("a", &tokens("A")).await.unwrap();
        let mode = fs::metadata(store.path_for("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let lease = store
            .lock_refresh("a", Duration::from_secs(1))
            .await
            .unwrap();
        let mode = fs::metadata(dir.join(lock_file_name("a")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        lease.unwrap().release().await.unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_fifo_at_a_files_name_is_refused_without_blocking() {
        let dir = temp_dir("fifo");
        let store = FileStore::new(&dir);
        store.save("a", &tokens("A")).await.unwrap();
        for path in [store.path_for("a"), dir.join(lock_file_name("a"))] {
            let _ = fs::remove_file(&path);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &path,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap();
        }
        let refused = tokio::time::timeout(Duration::from_secs(5), async {
            (
                store.load("a").await.unwrap_err(),
                store
                    .lock_refresh("a", Duration::from_secs(1))
                    .await
                    .unwrap_err(),
            )
        })
        .await
        .expect("opening a FIFO blocked");
        for e in [refused.0, refused.1] {
            assert!(!e.is_transient(), "{e}");
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_corrupt_file_is_a_permanent_error_and_stays() {
        let dir = temp_dir("corrupt");
        let store = FileStore::new(&dir);
        store.save("a", &tokens("A")).await.unwrap();
        let path = store.path_for("a");
        fs::write(&path, b"{\"v\":1,\"refresh_token\":\"rt-SECRET-MARKER").unwrap();
        let e = store.load("a").await.unwrap_err();
        assert!(!e.is_transient());
        let text = e.to_string();
        assert!(text.contains("corrupt"), "{text}");
        assert!(!text.contains("SECRET-MARKER"), "{text}");
        assert!(path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn clear_if_refresh_token_keeps_a_newer_refresh_token() {
        let dir = temp_dir("cas-newer");
        let this = FileStore::new(&dir);
        // Nothing stored: nothing removed, and no directory made for it.
        assert!(
            !this
                .clear_if_refresh_token("a", &RefreshToken::new("rt-OLD"))
                .await
                .unwrap()
        );
        assert!(!dir.exists());
        this.save("a", &tokens("OLD")).await.unwrap();
        // Another process rotated the refresh token meanwhile.
        let other = FileStore::new(&dir);
        other.save("a", &tokens("NEW")).await.unwrap();
        let removed = this
            .clear_if_refresh_token("a", &RefreshToken::new("rt-OLD"))
            .await
            .unwrap();
        assert!(!removed);
        assert_eq!(this.load("a").await.unwrap(), Some(tokens("NEW")));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn clear_if_refresh_token_clears_the_matching_one() {
        let dir = temp_dir("cas-match");
        let store = FileStore::new(&dir);
        store.save("a", &tokens("A")).await.unwrap();
        store.save("b", &tokens("A")).await.unwrap();
        let removed = store
            .clear_if_refresh_token("a", &RefreshToken::new("rt-A"))
            .await
            .unwrap();
        assert!(removed);
        assert!(!store.path_for("a").exists());
        assert!(store.load("a").await.unwrap().is_none());
        // Once removed, there is nothing left to remove; other namespaces are untouched.
        assert!(
            !store
                .clear_if_refresh_token("a", &RefreshToken::new("rt-A"))
                .await
                .unwrap()
        );
        assert_eq!(store.load("b").await.unwrap(), Some(tokens("A")));
        // It works while this process holds the refresh lease (a separate lock).
        let lease = store
            .lock_refresh("b", Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .clear_if_refresh_token("b", &RefreshToken::new("rt-A"))
                .await
                .unwrap()
        );
        lease.release().await.unwrap();
        assert!(store.load("b").await.unwrap().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clear_if_refresh_token_compares_after_a_save_in_progress() {
        let dir = temp_dir("cas-race");
        let store = FileStore::new(&dir);
        store.save("a", &tokens("OLD")).await.unwrap();
        // Another process is saving: it holds the write lock around its rename.
        let saver = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(write_lock_file_name("a")))
            .unwrap();
        fs4::FileExt::try_lock(&saver).unwrap();
        let clearing = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .clear_if_refresh_token("a", &RefreshToken::new("rt-OLD"))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!clearing.is_finished(), "it waits for the write lock");
        let tmp = dir.join("other-process.tmp");
        fs::write(&tmp, tokens("NEW").to_json().expose_secret()).unwrap();
        fs::rename(&tmp, store.path_for("a")).unwrap();
        fs4::FileExt::unlock(&saver).unwrap();
        // It compared what the save left, not what it would have read before.
        assert!(!clearing.await.unwrap().unwrap());
        assert_eq!(store.load("a").await.unwrap(), Some(tokens("NEW")));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn clear_if_refresh_token_leaves_a_corrupt_file_and_says_so() {
        let dir = temp_dir("cas-corrupt");
        let store = FileStore::new(&dir);
        store.save("a", &tokens("A")).await.unwrap();
        let path = store.path_for("a");
        fs::write(&path, b"{\"v\":1,\"refresh_token\":\"rt-SECRET-MARKER").unwrap();
        let e = store
            .clear_if_refresh_token("a", &RefreshToken::new("rt-SECRET-MARKER"))
            .await
            .unwrap_err();
        assert!(!e.is_transient());
        assert!(e.to_string().contains("corrupt"), "{e}");
        assert!(!e.to_string().contains("SECRET-MARKER"), "{e}");
        assert!(path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lease_is_exclusive_and_waits_for_release() {
        let dir = temp_dir("lease");
        let first = FileStore::new(&dir);
        let second = FileStore::new(&dir).lock_wait_timeout(Duration::from_millis(100));
        let lease = first
            .lock_refresh("a", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(lease.is_some());
        // A second holder (another open file, as in another process) times out, transiently.
        let e = second
            .lock_refresh("a", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e}");
        // Another namespace is independent.
        let other = second
            .lock_refresh("b", Duration::from_secs(1))
            .await
            .unwrap();
        other.unwrap().release().await.unwrap();
        // A waiter gets the lease once it is released.
        let waiter = tokio::spawn({
            let store = FileStore::new(&dir).lock_wait_timeout(Duration::from_secs(5));
            async move {
                let started = Instant::now();
                let lease = store
                    .lock_refresh("a", Duration::from_secs(1))
                    .await
                    .unwrap();
                lease.unwrap().release().await.unwrap();
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        lease.unwrap().release().await.unwrap();
        let waited = waiter.await.unwrap();
        assert!(waited >= Duration::from_millis(40), "{waited:?}");
        // Dropping a lease without releasing it frees the lock too.
        let dropped = first
            .lock_refresh("a", Duration::from_secs(1))
            .await
            .unwrap();
        drop(dropped);
        let again = second
            .lock_refresh("a", Duration::from_secs(1))
            .await
            .unwrap();
        again.unwrap().release().await.unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
