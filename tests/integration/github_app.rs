//! GitHub App authentication against a fake GitHub that enforces the App rules
//! (github_fake/app.rs): the notifier's tokens, the daemon and the CLI.

use crate::github_fake;
use crate::support;

use github_fake::app::{APP_ID, AppGitHub, INSTALLATION, key_pem};
use notifiers::{
    App, AppCredential, Check, CommitStatus, Credential, GitUrl, Notifier, Reason, Retry, Sha, State,
};
use secrecy::SecretString;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Daemon, WAIT, compact, post_as_fluxd};

const SHA: &str = "4997efcd4ac6255604d0d44eeb7085c5b0eb9d48";

fn app(installation: Option<u64>) -> Credential {
    Credential::App(AppCredential {
        app: Arc::new(App::new(APP_ID, &SecretString::from(key_pem())).unwrap()),
        installation,
    })
}

fn notifier(api: &str, repo: &str, credential: Credential) -> Arc<dyn Notifier> {
    let client = notifiers::http::client(&Default::default()).unwrap();
    let url = GitUrl::parse(&format!("https://github.com/{repo}")).unwrap();
    notifiers::github::SPEC
        .provider()
        .notifier(client, &url, Some(api), credential)
        .unwrap()
}

fn status(description: &str) -> CommitStatus {
    CommitStatus {
        sha: Sha::parse(SHA).unwrap(),
        check: Check::new("flux-status/dev/sync"),
        state: State::Succeeded,
        description: description.to_string(),
        target_url: None,
        summary: None,
        git_ref: None,
    }
}

fn assert_clean(gh: &AppGitHub) {
    assert_eq!(gh.violations(), Vec::<String>::new(), "requests off the spec");
}

#[tokio::test]
async fn mints_a_token_once_and_writes_with_it() {
    let gh = AppGitHub::start().await;
    let n = notifier(&gh.uri(), "acme/app", app(Some(INSTALLATION)));
    for i in 0..3 {
        n.write(&status(&format!("write {i}")), None).await.unwrap();
    }
    assert_eq!(gh.statuses().len(), 3);
    assert_eq!(gh.mints(), 1, "the token is cached");
    assert_eq!(gh.lookups(), 0, "the installation was given");
    assert!(gh.refusals().is_empty(), "{:?}", gh.refusals());
    assert_clean(&gh);
    assert_no_secret(&format!("{:?}", app(Some(INSTALLATION))), &gh);
}

#[tokio::test]
async fn concurrent_requests_share_one_mint() {
    let gh = AppGitHub::start().await;
    let n = notifier(&gh.uri(), "acme/app", app(None));
    let writes: Vec<_> = (0..16)
        .map(|i| {
            let n = n.clone();
            tokio::spawn(async move { n.write(&status(&format!("w{i}")), None).await })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    assert_eq!(
        (gh.mints(), gh.lookups()),
        (1, 1),
        "one lookup and one mint for all"
    );
    assert_eq!(gh.statuses().len(), 16);
    assert_clean(&gh);
}

#[tokio::test]
async fn the_token_is_refreshed_at_80_percent_of_its_lifetime() {
    let gh = AppGitHub::start().await;
    // Whole seconds on GitHub's side: the token lives 9 to 10 s from the mint, so
    // 8.5 s later it is past 80% and still valid.
    gh.set_lifetime(Duration::from_secs(10));
    let n = notifier(&gh.uri(), "acme/app", app(Some(INSTALLATION)));
    n.write(&status("first"), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(8500)).await;
    n.write(&status("second"), None).await.unwrap();
    assert_eq!(gh.mints(), 2, "refreshed before expiry");
    assert!(
        gh.refusals().is_empty(),
        "no write met an expired token: {:?}",
        gh.refusals()
    );
    assert_clean(&gh);
}

#[tokio::test]
async fn an_expired_token_is_refused_and_replaced_once_before_the_write_fails() {
    let gh = AppGitHub::start().await;
    gh.set_lifetime(Duration::from_secs(2));
    let n = notifier(&gh.uri(), "acme/app", app(Some(INSTALLATION)));
    n.write(&status("first"), None).await.unwrap();
    // GitHub forgets the token while our clock still thinks it fresh.
    gh.revoke_tokens();
    n.write(&status("after revocation"), None).await.unwrap();
    assert_eq!(gh.mints(), 2);
    assert_eq!(gh.refusals().len(), 1, "{:?}", gh.refusals());
    assert_eq!(gh.statuses().len(), 2);
    // And a token past its expiry is refused by the fake, not only revoked ones.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stale = reqwest::Client::new()
        .get(format!("{}/repos/acme/app", gh.uri()))
        .bearer_auth(gh.secrets().iter().find(|s| s.starts_with("ghs_")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 401);
    assert_clean(&gh);
}

#[tokio::test]
async fn the_installation_is_looked_up_and_a_missing_one_says_what_to_do() {
    let gh = AppGitHub::start().await;
    let n = notifier(&gh.uri(), "acme/app", app(None));
    n.check_credentials().await.unwrap();
    n.write(&status("found"), None).await.unwrap();
    assert_eq!((gh.lookups(), gh.mints()), (1, 1));

    let elsewhere = notifier(&gh.uri(), "acme/other", app(None));
    let e = elsewhere.write(&status("x"), None).await.unwrap_err();
    assert_eq!(
        (e.retry, e.reason, e.status),
        (Retry::Permanent, Reason::NotFound, Some(404))
    );
    assert!(e.message.contains("not installed on acme/other"), "{}", e.message);

    let wrong = notifier(&gh.uri(), "acme/app", app(Some(999)));
    let e = wrong.check_credentials().await.unwrap_err();
    assert_eq!((e.retry, e.reason), (Retry::Permanent, Reason::NotFound));
    assert!(e.message.contains("installation id (999)"), "{}", e.message);
    assert_clean(&gh);
    assert_no_secret(&format!("{e} {e:?}"), &gh);
}

#[tokio::test]
async fn a_failed_mint_is_classified() {
    // Nothing listens: transient, so delivery retries.
    let n = notifier("http://127.0.0.1:9", "acme/app", app(Some(INSTALLATION)));
    let e = n.write(&status("x"), None).await.unwrap_err();
    assert_eq!(e.retry, Retry::Transient);
    // A JWT GitHub refuses for its times: permanent, and the message says to check.
    let gh = AppGitHub::start().await;
    gh.set_clock_offset(-120);
    let n = notifier(&gh.uri(), "acme/app", app(Some(INSTALLATION)));
    let e = n.write(&status("x"), None).await.unwrap_err();
    assert_eq!((e.retry, e.reason), (Retry::Permanent, Reason::Unauthorized));
    assert!(
        e.message.contains("'iat'") && e.message.contains("clock"),
        "{}",
        e.message
    );
    assert!(gh.statuses().is_empty());
    assert_no_secret(&format!("{e} {e:?}"), &gh);
}

#[tokio::test]
async fn github_enterprise_server_is_reached_under_its_api_path() {
    let gh = AppGitHub::start().await;
    let api = format!("{}/api/v3", gh.uri());
    let n = notifier(&api, "acme/app", app(None));
    n.write(&status("on GHES"), None).await.unwrap();
    let paths = gh.paths();
    assert!(paths.iter().all(|p| p.starts_with("/api/v3/")), "{paths:?}");
    assert!(paths.contains(&format!("/api/v3/app/installations/{INSTALLATION}/access_tokens")));
    assert_clean(&gh);
}

/// The daemon with the App's flags, its key in a file.
async fn daemon_with_app(gh: &AppGitHub, key_file: &std::path::Path) -> Daemon {
    let key = key_file.to_str().unwrap();
    let id = APP_ID.to_string();
    Daemon::start(
        &[
            "--git-url",
            "https://github.com/acme/app",
            "--instance",
            "dev",
            "--api-url",
            &gh.uri(),
        ],
        &[("GITHUB_APP_ID", &id), ("GITHUB_APP_PRIVATE_KEY_FILE", key)],
    )
    .await
}

async fn wait_ready(d: &Daemon) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = support::http()
            .get(format!("http://{}/readyz", d.ops))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "not ready; logs: {:#?}", d.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_daemon_is_ready_with_an_app_writes_and_never_logs_a_secret() {
    let gh = AppGitHub::start().await;
    let dir = support::temp_dir("app-key");
    let key_file = dir.join("key.pem");
    std::fs::write(&key_file, key_pem()).unwrap();
    let d = daemon_with_app(&gh, &key_file).await;
    wait_ready(&d).await;
    assert!(gh.mints() >= 1 && gh.lookups() == 1, "the check minted a token");
    let (code, _) = post_as_fluxd(&d.url("/v6/events"), compact("v1/event-sync.json"), None).await;
    assert_eq!(code, 202);
    let deadline = Instant::now() + WAIT;
    while gh.statuses().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no status written; logs: {:#?}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_clean(&gh);
    assert_no_secret(&serde_json::to_string(&d.logs()).unwrap(), &gh);
}

#[tokio::test]
async fn a_clock_github_disagrees_with_is_logged_as_clock_skew() {
    let gh = AppGitHub::start().await;
    // GitHub's clock two minutes behind ours: our iat is in its future.
    gh.set_clock_offset(-120);
    let dir = support::temp_dir("app-key");
    let key_file = dir.join("key.pem");
    std::fs::write(&key_file, key_pem()).unwrap();
    let d = daemon_with_app(&gh, &key_file).await;
    let line = d
        .wait_log(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("clock skew"))
                || l["message"].as_str().is_some_and(|m| m.contains("clock skew"))
        })
        .await;
    let text = line.to_string();
    assert!(text.contains("NTP"), "{text}");
    let r = support::http()
        .get(format!("http://{}/readyz", d.ops))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "not ready while GitHub refuses the App");
    assert_no_secret(&serde_json::to_string(&d.logs()).unwrap(), &gh);
}

fn assert_no_secret(text: &str, gh: &AppGitHub) {
    let secrets = gh.secrets();
    assert!(!secrets.is_empty());
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a JWT or token leaked");
        // A JWT's signature alone is secret enough.
        if let Some(sig) = s.rsplit('.').next().filter(|_| s.contains('.')) {
            assert!(!text.contains(sig), "a JWT signature leaked");
        }
    }
    let pem = key_pem();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "the private key leaked");
    }
}

fn cli(gh: &AppGitHub, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flux-status-cli"));
    cmd.args([
        "--git-url",
        "https://github.com/acme/app",
        "--api-url",
        &gh.uri(),
        "--commit-id",
        SHA,
    ]);
    cmd.args(["--instance", "dev", "--action", "sync"]);
    for var in [
        "GITHUB_TOKEN",
        "GITHUB_APP_ID",
        "GITHUB_APP_PRIVATE_KEY",
        "GITHUB_APP_PRIVATE_KEY_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_reads_back_with_an_app_and_refuses_a_token_beside_it() {
    let gh = AppGitHub::start().await;
    let n = notifier(&gh.uri(), "acme/app", app(None));
    n.write(&status("Sync succeeded"), None).await.unwrap();
    let pem = key_pem();
    let (code, out, err) = cli(
        &gh,
        &[("GITHUB_APP_ID", APP_ID), ("GITHUB_APP_PRIVATE_KEY", &pem)],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(r#""name":"flux-status/dev/sync","state":"succeeded""#),
        "{out}"
    );
    assert_no_secret(&format!("{out}{err}"), &gh);

    let (code, out, err) = cli(
        &gh,
        &[
            ("GITHUB_APP_ID", APP_ID),
            ("GITHUB_APP_PRIVATE_KEY", &pem),
            ("GITHUB_TOKEN", "ghp_also_given"),
        ],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("--github-token") && err.contains("--github-app-id"),
        "{err}"
    );
    assert!(!err.contains("ghp_also_given"), "{err}");

    // A key that is no key: refused without being quoted.
    let bad = pem.replace("MII", "QQQ");
    let (code, _, err) = cli(
        &gh,
        &[("GITHUB_APP_ID", APP_ID), ("GITHUB_APP_PRIVATE_KEY", &bad)],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--github-app-private-key") && !err.contains("QQQ"),
        "{err}"
    );
    assert_clean(&gh);
}
