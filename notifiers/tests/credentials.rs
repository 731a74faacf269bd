//! A credential that rotates: a notifier asks its source for the token on every
//! request, and on a refusal tries once more with a fresher one. A fixed token's
//! refusal stays final, with no second request.

use notifiers::http::HttpConfig;
use notifiers::{
    Check, CommitStatus, CredentialSource, GitUrl, Notifier, NotifyError, Provider, Reason, Retry, Sha,
    State, StaticToken,
};
use secrecy::{ExposeSecret, SecretString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use wiremock::matchers::{header, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Hands out `tokens` in turn: a refusal of the current one moves to the next.
struct Rotating {
    tokens: Vec<&'static str>,
    at: Mutex<usize>,
    refusals: AtomicUsize,
}

impl Rotating {
    fn new(tokens: Vec<&'static str>) -> Arc<Rotating> {
        Arc::new(Rotating {
            tokens,
            at: Mutex::new(0),
            refusals: AtomicUsize::new(0),
        })
    }
}

#[async_trait::async_trait]
impl CredentialSource for Rotating {
    async fn token(&self) -> Result<SecretString, NotifyError> {
        let at = *self.at.lock().unwrap();
        Ok(SecretString::from(self.tokens[at]))
    }

    fn refused(&self, token: &SecretString) -> bool {
        self.refusals.fetch_add(1, Ordering::Relaxed);
        let mut at = self.at.lock().unwrap();
        if token.expose_secret() == self.tokens[*at] && *at + 1 < self.tokens.len() {
            *at += 1;
            return true;
        }
        false
    }
}

/// Each provider, with the header that carries its token and that header's value
/// for the token `new`.
struct Case {
    name: &'static str,
    git_url: &'static str,
    header: &'static str,
    accepted: &'static str,
}

const CASES: [Case; 7] = [
    Case {
        name: "github",
        git_url: "https://github.com/o/r",
        header: "authorization",
        accepted: "Bearer new",
    },
    Case {
        name: "gitlab",
        git_url: "https://gitlab.com/o/r",
        header: "private-token",
        accepted: "new",
    },
    Case {
        name: "azure-devops",
        git_url: "https://dev.azure.com/acme/proj/_git/repo",
        header: "authorization",
        // Basic, empty user: base64(":new").
        accepted: "Basic Om5ldw==",
    },
    // A bare Bitbucket token is sent as Bearer.
    Case {
        name: "bitbucket",
        git_url: "https://bitbucket.org/o/r",
        header: "authorization",
        accepted: "Bearer new",
    },
    Case {
        name: "bitbucket-server",
        git_url: "https://git.example.com/scm/PROJ/r.git",
        header: "authorization",
        accepted: "Bearer new",
    },
    Case {
        name: "gitea",
        git_url: "https://git.example.com/o/r",
        header: "authorization",
        accepted: "token new",
    },
    Case {
        name: "forgejo",
        git_url: "https://codeberg.org/o/r",
        header: "authorization",
        accepted: "token new",
    },
];

fn notifier(case: &Case, api: &str, credential: Arc<dyn CredentialSource>) -> Arc<dyn Notifier> {
    let client = notifiers::http::client(&HttpConfig::default()).unwrap();
    let url = GitUrl::parse(case.git_url).unwrap();
    Provider::named(case.name)
        .unwrap()
        .connect(notifiers::provider::Connect {
            client,
            git_url: &url,
            api_url: Some(api),
            credential,
        })
        .unwrap()
}

/// A provider that takes only the token `new` and refuses any other with 401.
async fn accepting_only_new(case: &Case) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header(case.header, case.accepted))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({"id": 1})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(serde_json::json!({"message": "Bad credentials"})),
        )
        .with_priority(10)
        .mount(&server)
        .await;
    server
}

fn status() -> CommitStatus {
    CommitStatus {
        sha: Sha::parse(&"a".repeat(40)).unwrap(),
        check: Check::new("flux-status/dev/sync"),
        state: State::Succeeded,
        description: "synced".into(),
        target_url: None,
        summary: None,
        git_ref: None,
    }
}

async fn requests(server: &MockServer) -> Vec<wiremock::Request> {
    server.received_requests().await.unwrap_or_default()
}

#[tokio::test]
async fn a_refused_token_is_replaced_by_a_fresh_one_and_the_write_goes_through() {
    for case in &CASES {
        let server = accepting_only_new(case).await;
        let source = Rotating::new(vec!["old", "new"]);
        let n = notifier(case, &server.uri(), source.clone());
        n.write(&status(), None)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(
            requests(&server).await.len(),
            2,
            "{}: refused once, then sent again",
            case.name
        );
        assert_eq!(source.refusals.load(Ordering::Relaxed), 1, "{}", case.name);
        // The fresh token is the one asked for from now on.
        n.write(&status(), None).await.unwrap();
        assert_eq!(requests(&server).await.len(), 3, "{}", case.name);
        assert_eq!(source.refusals.load(Ordering::Relaxed), 1, "{}", case.name);
    }
}

#[tokio::test]
async fn a_refusal_with_no_fresher_token_is_final_after_one_more_try_at_most() {
    for case in &CASES {
        // Rotated to a token that is refused as well: one more try, then the 401 stands.
        let server = accepting_only_new(case).await;
        let source = Rotating::new(vec!["old", "older"]);
        let e = notifier(case, &server.uri(), source.clone())
            .write(&status(), None)
            .await
            .unwrap_err();
        assert_eq!(
            (e.retry, e.reason),
            (Retry::Permanent, Reason::Unauthorized),
            "{}",
            case.name
        );
        assert_eq!(requests(&server).await.len(), 2, "{}", case.name);

        // A fixed token: refused() has nothing fresher, so no second request.
        let server = accepting_only_new(case).await;
        let e = notifier(case, &server.uri(), Arc::new(StaticToken::new("old".into())))
            .write(&status(), None)
            .await
            .unwrap_err();
        assert_eq!(
            (e.retry, e.reason),
            (Retry::Permanent, Reason::Unauthorized),
            "{}",
            case.name
        );
        assert_eq!(requests(&server).await.len(), 1, "{}", case.name);
        assert!(
            !e.to_string().contains("old"),
            "{}: token in error: {e}",
            case.name
        );
    }
}

/// A provider added to the registry rotates its credential too.
#[test]
fn every_registered_provider_has_its_case() {
    let mut registered: Vec<&str> = notifiers::PROVIDERS.iter().map(|p| p.name).collect();
    let mut tested: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    registered.sort();
    tested.sort();
    assert_eq!(registered, tested);
}
