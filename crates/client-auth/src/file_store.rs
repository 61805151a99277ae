//! A token store in files, shared by the processes of one host (feature `file-store`).
//!
//! One JSON file per namespace ([`StoredTokens::to_json`]) in one directory. Writes are
//! atomic: a temporary file in the same directory is written, flushed to disk, renamed over the
//! old file, and the directory is flushed, so a reader never sees half a file and a crash never
//! leaves a torn one. Files are created with mode `0600` and the directory (when this store
//! creates it) with `0700` on unix.
//!
//! The refresh lease is an advisory lock (`flock` on unix, `LockFileEx` on Windows) on a
//! separate `<name>.lock` file, held across "re-read, refresh if still needed, write": several
//! processes refresh one rotating refresh token once. The operating system drops the lock when
//! its holder dies, so a crashed holder never blocks the others, and holds it for as long as
//! the holder lives: the lease has no ttl to extend, and [`RefreshLease::renew`] is the
//! trait's default, which does nothing.
//!
//! [`clear_if_refresh_token`](TokenStore::clear_if_refresh_token) (compare-and-delete) is
//! atomic across the processes of the host: it reads, compares and removes the file under a
//! second advisory lock, on `<name>.write.lock`, which every save also takes around its rename.
//! So a refresh token that another process saved meanwhile is never removed. That lock is held
//! for a few file operations only, never across a token request, and is separate from the
//! lease, so a process holding the lease can call it.
//!
//! Every operation first checks the directory (owned by the effective uid, no group or other
//! write bit, on unix) and opens every file without following a symbolic link (`O_NOFOLLOW`
//! on unix): see "Permissions" on [`FileStore`].

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::BoxFuture;
use crate::error::StoreError;
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
/// The lease waits for another holder by polling the lock (with backoff), at most
/// [`lock_wait_timeout`](Self::lock_wait_timeout); by default the lease's own ttl plus a second.
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
/// Whoever can change the directory can read the session (and replace it with their own), so
/// the store insists on a private one. On unix, before every operation:
///
/// - **The directory must be owned by the process's effective user and have no group or other
///   write bit** (`0700` or `0755` pass; `0770`, `0777` and the sticky `1777` of `/tmp` do
///   not). Otherwise the operation fails with a permanent [`StoreError`] that names the
///   directory, its mode or owner, and what to change. The store creates a missing directory
///   (and missing parents) with mode `0700`. The path may reach the directory through a
///   symbolic link; the checks apply to the directory it resolves to. Its ancestors, and
///   access granted by ACLs, are not checked: keep them writable by trusted users only.
/// - **Files are never followed through a symbolic link.** The token file, the lease lock
///   (`<namespace>.lock`), the write lock (`<namespace>.write.lock`) and the temporary files
///   are opened with `O_NOFOLLOW`, so a symbolic link planted at one of those names is refused
///   (a permanent error naming the file) and its target is neither read nor created. Anything
///   but a regular file there is refused too. A save replaces a symbolic link at the token
///   file's name by renaming over it, without writing through it.
/// - **Files are created with mode `0600`.** A token file that already exists keeps its mode.
///
/// On Windows the directory's ACL is not checked (keep it under the user's profile, which is
/// private by default), and a symbolic link is refused by a check just before the file is
/// opened: a link created between that check and the open would be followed (creating one
/// needs the symbolic-link privilege or developer mode).
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
    /// before it fails with a transient error (default: the requested ttl plus one second).
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
        self.dir.join(format!("{}.json", file_name(namespace)))
    }

    fn lock_path(&self, namespace: &str) -> PathBuf {
        self.dir.join(format!("{}.lock", file_name(namespace)))
    }

    /// The lock serialising the renames and removals of compare-and-delete with saves. File
    /// names of namespaces hold no `.`, so no namespace's files collide with it.
    fn write_lock_path(&self, namespace: &str) -> PathBuf {
        self.dir
            .join(format!("{}.write.lock", file_name(namespace)))
    }
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

fn read(path: &Path) -> Result<Option<StoredTokens>, StoreError> {
    let mut file = match open_private(path, OpenOptions::new().read(true)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("could not read the token file", path, e)),
    };
    // Sized up front: a growing buffer would leave copies of the tokens in freed memory.
    let len = file
        .metadata()
        .map(|m| usize::try_from(m.len()).unwrap_or(0))
        .unwrap_or(0);
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(len.saturating_add(1)));
    io::Read::read_to_end(&mut file, &mut bytes)
        .map_err(|e| io_error("could not read the token file", path, e))?;
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

/// Checks that `dir` is private to this process's user (see "Permissions" on [`FileStore`]):
/// on unix, a directory owned by the effective uid without group or other write permission.
/// With `create`, a missing directory is made first (mode `0700`). Returns whether it exists.
fn private_dir(dir: &Path, create: bool) -> Result<bool, StoreError> {
    if create {
        create_dir(dir)?;
    }
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error("could not inspect the token directory", dir, e)),
    };
    if !meta.is_dir() {
        return Err(StoreError::permanent(format!(
            "the token directory {} is not a directory",
            dir.display()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(StoreError::permanent(format!(
                "refused the token directory {}: it is writable by its group or by others \
                 (mode {mode:04o}), so they could read or replace the tokens; make it private \
                 (chmod go-w, or 0700) or use another directory",
                dir.display()
            )));
        }
        let uid = rustix::process::geteuid().as_raw();
        if meta.uid() != uid {
            return Err(StoreError::permanent(format!(
                "refused the token directory {}: it is owned by uid {}, not by this process's \
                 user (uid {uid}), who could read or replace the tokens; chown it or use \
                 another directory",
                dir.display(),
                meta.uid()
            )));
        }
    }
    Ok(true)
}

/// Opens a file of the store without following a symbolic link at `path`, creating it with
/// mode `0600` (unix) when `options` create; refuses anything but a regular file.
fn open_private(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // `O_NONBLOCK`: a FIFO planted at the name must not hang the open; it is refused below
        // like anything else that is not a regular file (the flag does not change reads,
        // writes or `flock` on regular files). The flags fit an `i32` on every unix.
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        options.mode(0o600).custom_flags(flags.bits() as i32);
    }
    #[cfg(not(unix))]
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(symlink_refused());
    }
    let file = options.open(path);
    // `O_NOFOLLOW` on a symbolic link: `ELOOP` (`EMLINK` on FreeBSD and NetBSD).
    #[cfg(unix)]
    let file = file.map_err(|e| {
        let refused = matches!(
            rustix::io::Errno::from_io_error(&e),
            Some(rustix::io::Errno::LOOP | rustix::io::Errno::MLINK)
        ) && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if refused { symlink_refused() } else { e }
    });
    let file = file?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("it is not a regular file"));
    }
    Ok(file)
}

fn symlink_refused() -> io::Error {
    io::Error::other("it is a symbolic link, which the file store never follows; remove it")
}

/// Flushes a directory entry change (rename, unlink) to disk; a no-op where directories
/// cannot be opened (Windows).
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("could not flush the token directory", dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// An exclusive advisory lock on a write-lock file, released when dropped (closing the file
/// releases it, also when the process dies).
struct WriteLock {
    _file: File,
}

/// Takes the write lock at `path`, polling (on this blocking thread) for at most
/// [`WRITE_LOCK_WAIT`]: its holders keep it for a few file operations, so a longer wait means
/// a stuck holder, which must not hang this thread for ever.
fn write_lock(path: &Path) -> Result<WriteLock, StoreError> {
    let file = open_private(path, OpenOptions::new().read(true).write(true).create(true))
        .map_err(|e| io_error("could not open the write lock file", path, e))?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(1);
    loop {
        // Fully qualified: std's `File::try_lock` (Rust 1.89) would shadow it.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => return Ok(WriteLock { _file: file }),
            Err(fs4::TryLockError::WouldBlock) => {}
            Err(fs4::TryLockError::Error(e)) => return Err(io_error("could not lock", path, e)),
        }
        let waited = started.elapsed();
        if waited >= WRITE_LOCK_WAIT {
            return Err(StoreError::transient(format!(
                "timed out after {} ms waiting for the write lock {}",
                waited.as_millis(),
                path.display()
            )));
        }
        std::thread::sleep(delay.min(WRITE_LOCK_WAIT - waited));
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

fn write_atomic(
    dir: &Path,
    path: &Path,
    write_lock_path: &Path,
    contents: &[u8],
) -> Result<(), StoreError> {
    private_dir(dir, true)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.{}.{:016x}.tmp",
        std::process::id(),
        fastrand::u64(..)
    ));
    let written = (|| {
        let mut file = open_private(&tmp, OpenOptions::new().write(true).create_new(true))?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_error("could not write the token file", path, e));
    }
    // Only the rename is serialised with compare-and-delete: it is what replaces the tokens.
    let renamed = write_lock(write_lock_path).and_then(|_lock| {
        fs::rename(&tmp, path).map_err(|e| io_error("could not write the token file", path, e))
    });
    if let Err(e) = renamed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Compare-and-delete under the write lock: removes the file at `path` only while it holds
/// `refresh_token`.
fn clear_if_refresh_token(
    dir: &Path,
    path: &Path,
    write_lock_path: &Path,
    refresh_token: &RefreshToken,
) -> Result<bool, StoreError> {
    // Nothing stored: nothing to compare, and no lock file to create.
    if !private_dir(dir, false)? {
        return Ok(false);
    }
    if let Err(e) = fs::symlink_metadata(path)
        && e.kind() == io::ErrorKind::NotFound
    {
        return Ok(false);
    }
    let removed = {
        let _lock = write_lock(write_lock_path)?;
        match read(path)? {
            Some(stored) if stored.refresh_token.as_ref() == Some(refresh_token) => {
                match fs::remove_file(path) {
                    Ok(()) => true,
                    // A `clear` (which takes no lock) removed it first.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(io_error("could not remove the token file", path, e)),
                }
            }
            _ => false,
        }
    };
    if removed {
        sync_dir(dir)?;
    }
    Ok(removed)
}

impl TokenStore for FileStore {
    fn load<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredTokens>, StoreError>> {
        let dir = self.dir.clone();
        let path = self.path_for(namespace);
        Box::pin(blocking(move || {
            if !private_dir(&dir, false)? {
                return Ok(None);
            }
            read(&path)
        }))
    }

    fn save<'a>(
        &'a self,
        namespace: &'a str,
        tokens: &'a StoredTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let dir = self.dir.clone();
        let path = self.path_for(namespace);
        let write_lock_path = self.write_lock_path(namespace);
        let json = tokens.to_json();
        Box::pin(blocking(move || {
            write_atomic(
                &dir,
                &path,
                &write_lock_path,
                json.expose_secret().as_bytes(),
            )
        }))
    }

    fn clear<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let dir = self.dir.clone();
        let path = self.path_for(namespace);
        Box::pin(blocking(move || {
            if !private_dir(&dir, false)? {
                return Ok(());
            }
            // Removing a symbolic link at the name removes the link, not its target.
            match fs::remove_file(&path) {
                Ok(()) => sync_dir(&dir),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error("could not remove the token file", &path, e)),
            }
        }))
    }

    fn clear_if_refresh_token<'a>(
        &'a self,
        namespace: &'a str,
        refresh_token: &'a RefreshToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let dir = self.dir.clone();
        let path = self.path_for(namespace);
        let write_lock_path = self.write_lock_path(namespace);
        let refresh_token = refresh_token.clone();
        Box::pin(blocking(move || {
            clear_if_refresh_token(&dir, &path, &write_lock_path, &refresh_token)
        }))
    }

    fn lock_refresh<'a>(
        &'a self,
        namespace: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Box<dyn RefreshLease>>, StoreError>> {
        let dir = self.dir.clone();
        let path = self.lock_path(namespace);
        let wait = self
            .lock_wait
            .unwrap_or_else(|| ttl.saturating_add(Duration::from_secs(1)));
        Box::pin(async move {
            let file = {
                let path = path.clone();
                blocking(move || {
                    private_dir(&dir, true)?;
                    open_private(
                        &path,
                        OpenOptions::new().read(true).write(true).create(true),
                    )
                    .map_err(|e| io_error("could not open the lock file", &path, e))
                })
                .await?
            };
            let started = Instant::now();
            let mut delay = Duration::from_millis(2);
            let mut file = Some(file);
            loop {
                let Some(f) = file.take() else {
                    return Err(StoreError::transient("the lock file was lost"));
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
                .await?;
                if locked {
                    tracing::trace!(path = %path.display(), "file refresh lease taken");
                    return Ok(Some(
                        Box::new(FileLease { file: Some(f) }) as Box<dyn RefreshLease>
                    ));
                }
                file = Some(f);
                let waited = started.elapsed();
                if waited >= wait {
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
        let mode = fs::metadata(store.lock_path("a"))
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
        for path in [store.path_for("a"), store.lock_path("a")] {
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
            .open(store.write_lock_path("a"))
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
