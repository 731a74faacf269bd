//! Every ingest route has its own credential: with `--hmac-key-file` alone (what
//! chart-values/flux-v2 ships), fluxd's routes are refused, not open; with `--token`
//! every route needs it. The start-up log says how each route is authenticated.

use crate::support;

use serde_json::Value;
use support::{Daemon, compact, connect_fluxd, fixture, post_as_fluxd, secret_file, v2_signature};

const HMAC_KEY: &str = "flux-fixture-hmac-key";

const V2_EVENT: &str = "kustomization-reconciliation-succeeded.json";

async fn forward(d: &Daemon, signature: Option<&str>, bearer: Option<&str>) -> u16 {
    let mut req = support::http()
        .post(d.url("/v2/events"))
        .header("Content-Type", "application/json")
        .body(fixture(&format!("v2/forwarded/{V2_EVENT}")));
    if let Some(s) = signature {
        req = req.header("X-Signature", s);
    }
    if let Some(t) = bearer {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    req.send().await.unwrap().status().as_u16()
}

fn listening(d: &Daemon) -> Value {
    d.find_log(|l| l["message"] == "ingest listening")
        .expect("ingest listening line")
}

#[tokio::test]
async fn an_hmac_key_alone_refuses_fluxds_routes_instead_of_leaving_them_open() {
    let key = secret_file("hmac", HMAC_KEY);
    let d = Daemon::start(
        &[
            "--dry-run",
            "--git-url",
            "https://github.com/acme/app",
            "--hmac-key-file",
            &key,
        ],
        &[],
    )
    .await;

    // A forged fluxd sync, with no token and with any token: refused, nothing queued.
    let sync = compact("v1/fluxcloud-sync.json");
    for token in [None, Some(""), Some("guess")] {
        let (status, body) = post_as_fluxd(&d.url("/v6/events"), sync.clone(), token).await;
        assert_eq!(status, 401, "token {token:?}: {body}");
        let reason: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reason["reason"], "unauthorized");
    }
    let accepted = d
        .metric(r#"flux_status_events_received_total{source="fluxv1",type="sync",result="accepted"}"#)
        .await;
    assert_eq!(accepted, 0.0, "no forged sync was accepted");
    assert_eq!(
        d.metric(r#"flux_status_events_received_total{source="fluxv1",type="unknown",result="no_token_configured"}"#)
            .await,
        3.0
    );

    // fluxd's websocket is not upgraded.
    for path in ["/v11/daemon", "/flux/v6/daemon"] {
        let refused = connect_fluxd(&d, path, None).await.expect_err("not upgraded");
        assert!(refused.contains("401"), "{path}: {refused}");
    }
    assert!(
        d.metric(r#"flux_status_websocket_refused_total{reason="no_token_configured"}"#)
            .await
            >= 2.0
    );

    // Flux v2's own route still works, with its signature only.
    assert_eq!(forward(&d, None, None).await, 401);
    assert_eq!(forward(&d, Some(&v2_signature(V2_EVENT)), None).await, 202);

    let line = listening(&d);
    assert!(
        line["fluxd_routes"].as_str().unwrap_or("").starts_with("refused"),
        "{line}"
    );
    assert!(
        line["flux_v2_routes"]
            .as_str()
            .unwrap_or("")
            .contains("--hmac-key-file"),
        "{line}"
    );
    let logs = serde_json::to_string(&d.logs()).unwrap();
    assert!(!logs.contains(HMAC_KEY), "the key never reaches the log");
}

#[tokio::test]
async fn with_a_token_every_route_needs_it_and_the_log_says_so() {
    let key = secret_file("hmac", HMAC_KEY);
    let token = secret_file("token", "route-token\n");
    let d = Daemon::start(
        &[
            "--dry-run",
            "--git-url",
            "https://github.com/acme/app",
            "--hmac-key-file",
            &key,
            "--token-file",
            &token,
        ],
        &[],
    )
    .await;
    let sync = compact("v1/fluxcloud-sync.json");
    assert_eq!(
        post_as_fluxd(&d.url("/v6/events"), sync.clone(), None).await.0,
        401
    );
    assert_eq!(
        post_as_fluxd(&d.url("/v6/events"), sync, Some("route-token"))
            .await
            .0,
        202
    );
    assert!(connect_fluxd(&d, "/v11/daemon", None).await.is_err());
    assert!(
        connect_fluxd(&d, "/v11/daemon", Some("route-token"))
            .await
            .is_ok()
    );

    let sig = v2_signature(V2_EVENT);
    assert_eq!(
        forward(&d, Some(&sig), None).await,
        401,
        "signature without the token"
    );
    assert_eq!(
        forward(&d, None, Some("route-token")).await,
        401,
        "token without the signature"
    );
    assert_eq!(forward(&d, Some(&sig), Some("route-token")).await, 202);

    let line = listening(&d);
    assert_eq!(line["fluxd_routes"], "--token", "{line}");
    assert_eq!(
        line["flux_v2_routes"], "--token and --hmac-key-file (X-Signature)",
        "{line}"
    );
    let logs = serde_json::to_string(&d.logs()).unwrap();
    assert!(!logs.contains("route-token") && !logs.contains(HMAC_KEY));
}

#[tokio::test]
async fn with_no_credential_on_loopback_every_route_is_open_and_logged_as_such() {
    let d = Daemon::start(&["--dry-run", "--git-url", "https://github.com/acme/app"], &[]).await;
    let (status, _) = post_as_fluxd(&d.url("/v6/events"), compact("v1/fluxcloud-sync.json"), None).await;
    assert_eq!(status, 202);
    let line = listening(&d);
    assert!(
        line["fluxd_routes"].as_str().unwrap_or("").starts_with("open"),
        "{line}"
    );
    assert!(
        line["flux_v2_routes"].as_str().unwrap_or("").starts_with("open"),
        "{line}"
    );
}

/// Beyond loopback, start-up needs every route authenticated: `--hmac-key-file`
/// alone now qualifies (fluxd's routes are refused), nothing at all does not.
#[test]
fn listening_beyond_loopback_needs_every_route_authenticated() {
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_flux-status"))
            .args([
                "--dry-run",
                "--git-url",
                "https://github.com/a/b",
                "--listen",
                "0.0.0.0:1",
                "--ops-listen",
                "off",
                "--no-persistence",
                "--max-event-bytes",
                "1",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    // --max-event-bytes 1 fails validation, so each run stops after reporting every
    // problem: the listen problem is reported or not.
    let open = run(&[]);
    let err = String::from_utf8_lossy(&open.stderr);
    assert!(err.contains("could forge deploy statuses"), "{err}");
    assert!(err.contains("fluxd (/vN/daemon, /v6/events)"), "{err}");
    let key = secret_file("hmac", HMAC_KEY);
    let hmac_only = run(&["--hmac-key-file", &key]);
    let err = String::from_utf8_lossy(&hmac_only.stderr);
    assert!(err.contains("--max-event-bytes"), "{err}");
    assert!(!err.contains("could forge deploy statuses"), "{err}");
}
