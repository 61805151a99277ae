//! Providers that share a `FileStore` (as processes on one host do) refresh a rotating
//! refresh token once: the advisory lock is per open file, so providers in one process
//! coordinate exactly like separate processes. The multi-process version of this test is
//! `crates/client-auth-redis/tests/fleet.rs`.
#![cfg(feature = "file-store")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use client_auth::{
    AccessToken, FileStore, ManualClock, OAuthProvider, RefreshToken, StoredTokens, TokenStore,
};
use client_auth_testkit::{ServerConfig, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_sharing_a_file_store_refresh_a_rotating_token_once() {
    let server = TestServer::start_with(
        ServerConfig::default()
            .access_token_lifetime(Duration::from_secs(100))
            .token_delay(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "client-auth-file-store-providers-{}-{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let grant = server.issue_grant("alice", None);
    FileStore::new(&dir)
        .save(
            "alice",
            &StoredTokens {
                access_token: Some(AccessToken::new(grant.access_token.as_str())),
                refresh_token: Some(RefreshToken::new(grant.refresh_token.as_str())),
                expires_at: Some(SystemTime::now() + Duration::from_secs(100)),
                scope: None,
                issued_at: None,
                dpop_jkt: None,
            },
        )
        .await
        .unwrap();

    let clock = ManualClock::new();
    let providers: Vec<OAuthProvider> = (0..6)
        .map(|_| {
            OAuthProvider::refresh_token_grant(server.token_url())
                .client_id(server.client_id())
                .client_secret(server.client_secret().unwrap())
                .clock(Arc::new(clock.clone()))
                // One store value per provider: separate lock files, as in separate processes.
                .store(Arc::new(FileStore::new(&dir)), "alice")
                .build()
                .unwrap()
        })
        .collect();
    for p in &providers {
        assert_eq!(
            p.access_token().await.unwrap().expose_secret(),
            grant.access_token
        );
    }
    for round in 1..=3u64 {
        clock.advance(Duration::from_secs(95));
        server.advance(Duration::from_secs(95));
        let mut tasks = Vec::new();
        for p in &providers {
            for _ in 0..50 {
                let p = p.clone();
                tasks.push(tokio::spawn(async move { p.access_token().await }));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for t in tasks {
            seen.insert(t.await.unwrap().unwrap().expose_secret().to_owned());
        }
        assert_eq!(seen.len(), 1, "every provider adopted the one new token");
        let stats = server.stats();
        assert_eq!(stats.refresh_grants, round, "{stats:?}");
        assert!(stats.token_errors.is_empty(), "{stats:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A new, private directory for one test (`FileStore` refuses anything less).
fn fresh_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "client-auth-file-store-{tag}-{}-{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir).unwrap();
    dir
}

fn tokens(marker: &str) -> StoredTokens {
    StoredTokens {
        access_token: Some(AccessToken::new(format!("at-{marker}"))),
        refresh_token: Some(RefreshToken::new(format!("rt-{marker}"))),
        expires_at: SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(1_900_000_000_000)),
        scope: None,
        issued_at: None,
        dpop_jkt: None,
    }
}

/// Asserts a permanent error that names `path` and says `what`, without token text.
fn assert_refused(e: &client_auth::StoreError, path: &std::path::Path, what: &str) {
    let text = e.to_string();
    assert!(!e.is_transient(), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(what), "{text}");
    assert!(!text.contains("MARKER"), "{text}");
}

#[cfg(unix)]
#[tokio::test]
async fn a_symlinked_token_file_is_refused_not_adopted() {
    let dir = fresh_dir("symlink-tokens");
    let elsewhere = fresh_dir("symlink-tokens-attacker");
    let planted = elsewhere.join("attacker.json");
    std::fs::write(
        &planted,
        tokens("ATTACKER-MARKER").to_json().expose_secret(),
    )
    .unwrap();
    let store = FileStore::new(&dir);
    let path = store.path_for("alice");
    std::os::unix::fs::symlink(&planted, &path).unwrap();

    // The attacker's tokens are not adopted, nor compared.
    let e = store.load("alice").await.unwrap_err();
    assert_refused(&e, &path, "symbolic link");
    let e = store
        .clear_if_refresh_token("alice", &RefreshToken::new("rt-ATTACKER-MARKER"))
        .await
        .unwrap_err();
    assert_refused(&e, &path, "symbolic link");
    // A save replaces the link itself; the target is not written through it.
    store.save("alice", &tokens("OURS")).await.unwrap();
    assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
    assert_eq!(store.load("alice").await.unwrap(), Some(tokens("OURS")));
    assert_eq!(
        StoredTokens::from_json(&std::fs::read(&planted).unwrap()).unwrap(),
        tokens("ATTACKER-MARKER")
    );
    // `clear` removes a link, never its target.
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&planted, &path).unwrap();
    store.clear("alice").await.unwrap();
    assert!(std::fs::symlink_metadata(&path).is_err());
    assert!(planted.exists());
    // Anything but a regular file is refused too.
    std::fs::create_dir(&path).unwrap();
    let e = store.load("alice").await.unwrap_err();
    assert_refused(&e, &path, "not a regular file");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&elsewhere).unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn dangling_symlinked_lock_files_are_refused_and_their_targets_not_created() {
    let dir = fresh_dir("symlink-locks");
    let elsewhere = fresh_dir("symlink-locks-attacker");
    let store = FileStore::new(&dir);

    // The lease lock, `<namespace>.lock`.
    let lease_target = elsewhere.join("created-by-the-lease");
    let lease_lock = dir.join("alice.lock");
    std::os::unix::fs::symlink(&lease_target, &lease_lock).unwrap();
    let e = store
        .lock_refresh("alice", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_refused(&e, &lease_lock, "symbolic link");
    assert!(!lease_target.exists(), "the link's target was created");

    // The write lock, `<namespace>.write.lock`, taken by a save and by compare-and-delete.
    let write_target = elsewhere.join("created-by-the-save");
    let write_lock = dir.join("alice.write.lock");
    std::os::unix::fs::symlink(&write_target, &write_lock).unwrap();
    let e = store.save("alice", &tokens("MARKER")).await.unwrap_err();
    assert_refused(&e, &write_lock, "symbolic link");
    assert!(!write_target.exists(), "the link's target was created");
    assert!(store.load("alice").await.unwrap().is_none());
    // Nothing half-written is left behind.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.ends_with(".lock")), "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&elsewhere).unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn a_directory_writable_by_group_or_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = fresh_dir("writable-dir");
    let store = FileStore::new(&dir);
    for mode in [0o777, 0o770, 0o1777, 0o702, 0o720] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = store.save("alice", &tokens("MARKER")).await.unwrap_err();
        assert_refused(&e, &dir, "writable by its group or by others");
        let e = store.load("alice").await.unwrap_err();
        assert_refused(&e, &dir, "writable by its group or by others");
        let e = store
            .lock_refresh("alice", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_refused(&e, &dir, "writable by its group or by others");
        let e = store
            .clear_if_refresh_token("alice", &RefreshToken::new("rt-MARKER"))
            .await
            .unwrap_err();
        assert_refused(&e, &dir, "writable by its group or by others");
        let e = store.clear("alice").await.unwrap_err();
        assert_refused(&e, &dir, "writable by its group or by others");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{mode:o}");
    }
    // Readable by others is fine; so is a directory reached through a symbolic link.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    store.save("alice", &tokens("A")).await.unwrap();
    let link = dir.with_extension("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    assert_eq!(
        FileStore::new(&link).load("alice").await.unwrap(),
        Some(tokens("A"))
    );
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn a_directory_owned_by_another_user_is_refused() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = fresh_dir("foreign-owner");
    // This process's effective uid: the owner of a directory it just made.
    let uid = std::fs::metadata(&dir).unwrap().uid();
    let foreign = if uid == 0 {
        // As root: hand the directory to `nobody`.
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        dir.clone()
    } else {
        // Otherwise a directory root owns (mode 0755, so only the owner check refuses it).
        std::path::PathBuf::from("/")
    };
    assert_ne!(std::fs::metadata(&foreign).unwrap().uid(), uid);
    let store = FileStore::new(&foreign);
    let e = store.load("alice").await.unwrap_err();
    assert_refused(&e, &foreign, "owned by uid");
    let e = store.save("alice", &tokens("MARKER")).await.unwrap_err();
    assert_refused(&e, &foreign, "owned by uid");
    let e = store
        .lock_refresh("alice", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_refused(&e, &foreign, "owned by uid");
    assert!(!foreign.join("alice.json").exists());
    assert!(!foreign.join("alice.lock").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn token_and_lock_files_others_could_write_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = fresh_dir("foreign-files");
    let store = FileStore::new(&dir);
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };

    // A token file others may write: neither adopted nor compared, and left in place.
    let path = store.path_for("alice");
    std::fs::write(&path, tokens("PLANTED-MARKER").to_json().expose_secret()).unwrap();
    for mode in [0o666, 0o620, 0o602] {
        chmod(&path, mode);
        let e = store.load("alice").await.unwrap_err();
        assert_refused(&e, &path, "writable by its group or by others");
        let e = store
            .clear_if_refresh_token("alice", &RefreshToken::new("rt-PLANTED-MARKER"))
            .await
            .unwrap_err();
        assert_refused(&e, &path, "writable by its group or by others");
        assert!(path.exists());
    }

    // The lease lock and the write lock.
    let lease_lock = dir.join("alice.lock");
    std::fs::write(&lease_lock, b"").unwrap();
    chmod(&lease_lock, 0o666);
    let e = store
        .lock_refresh("alice", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_refused(&e, &lease_lock, "writable by its group or by others");
    let write_lock = dir.join("alice.write.lock");
    std::fs::write(&write_lock, b"").unwrap();
    chmod(&write_lock, 0o660);
    let e = store.save("alice", &tokens("OURS")).await.unwrap_err();
    assert_refused(&e, &write_lock, "writable by its group or by others");
    assert_eq!(
        StoredTokens::from_json(&std::fs::read(&path).unwrap()).unwrap(),
        tokens("PLANTED-MARKER")
    );

    // Made private again, the locks work; a save replaces the token file with a 0600 one.
    chmod(&lease_lock, 0o600);
    chmod(&write_lock, 0o600);
    store
        .lock_refresh("alice", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    store.save("alice", &tokens("OURS")).await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    assert_eq!(store.load("alice").await.unwrap(), Some(tokens("OURS")));

    // A file another user owns (only root can make one).
    if runs_as_root(&dir) {
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let e = store.load("alice").await.unwrap_err();
        assert_refused(&e, &path, "owned by uid 65534");
        std::os::unix::fs::chown(&lease_lock, Some(65534), None).unwrap();
        let e = store
            .lock_refresh("alice", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_refused(&e, &lease_lock, "owned by uid 65534");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether this process runs as root: the owner of a directory it made.
#[cfg(unix)]
fn runs_as_root(own_dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(own_dir).unwrap().uid() == 0
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_path_switched_between_directories_never_uses_the_refused_one() {
    // The store path is a symbolic link that someone flips between our private directory and
    // a world-writable one. The planted file there is `0600` (the file check passes), so only
    // checking the directory that the operation then uses keeps it out.
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    let parent = fresh_dir("switch-parent");
    let good = fresh_dir("switch-good");
    let evil = fresh_dir("switch-evil");
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o777)).unwrap();
    let planted = evil.join("alice.json");
    std::fs::write(&planted, tokens("PLANTED").to_json().expose_secret()).unwrap();
    let store_path = parent.join("tokens");
    std::os::unix::fs::symlink(&good, &store_path).unwrap();
    let store = FileStore::new(&store_path);
    store.save("alice", &tokens("OURS")).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let flipper = std::thread::spawn({
        let (stop, parent, store_path) = (Arc::clone(&stop), parent.clone(), store_path.clone());
        let (good, evil) = (good.clone(), evil.clone());
        move || {
            let tmp = parent.join("tokens.next");
            while !stop.load(Ordering::Relaxed) {
                for target in [&good, &evil] {
                    let _ = std::fs::remove_file(&tmp);
                    std::os::unix::fs::symlink(target, &tmp).unwrap();
                    std::fs::rename(&tmp, &store_path).unwrap();
                }
            }
        }
    });
    let started = std::time::Instant::now();
    let mut adopted = 0;
    let mut compared = 0;
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(2) {
        rounds += 1;
        if let Ok(Some(found)) = store.load("alice").await
            && found == tokens("PLANTED")
        {
            adopted += 1;
        }
        if let Ok(true) = store
            .clear_if_refresh_token("alice", &RefreshToken::new("rt-PLANTED"))
            .await
        {
            compared += 1;
        }
        let _ = store.save("alice", &tokens("OURS")).await;
        let _ = store
            .lock_refresh("alice", Duration::from_secs(1))
            .await
            .map(drop);
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    // Nothing was read from, written to or created in the refused directory.
    let names: Vec<String> = std::fs::read_dir(&evil)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["alice.json"], "after {rounds} rounds");
    assert_eq!(
        StoredTokens::from_json(&std::fs::read(&planted).unwrap()).unwrap(),
        tokens("PLANTED")
    );
    assert_eq!((adopted, compared), (0, 0), "after {rounds} rounds");
    for dir in [&parent, &good, &evil] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
