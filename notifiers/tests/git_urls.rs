//! Every form of git URL users write, across the providers: which provider, which
//! API base, which repository. Invalid ones fail with a clear error.

use notifiers::bitbucket::{cloud, server};
use notifiers::{GitUrl, Provider, azure_devops, forgejo, gitea, github, gitlab};

/// What a URL resolves to, as one comparable line: `provider api-base repository`.
fn resolve(input: &str, explicit: Option<Provider>) -> Result<String, String> {
    let url = GitUrl::parse(input).map_err(|e| e.to_string())?;
    let provider = explicit
        .or_else(|| Provider::detect(&url.host))
        .ok_or_else(|| format!("cannot tell the provider of {}", url.host))?;
    let e = |e: notifiers::GitUrlError| e.to_string();
    Ok(match provider.as_str() {
        "github" => {
            let (o, r) = github::repo_path(&url).map_err(e)?;
            format!("github {} {o}/{r}", github::default_api_url(&url))
        }
        "gitlab" => format!(
            "gitlab {} {}",
            gitlab::default_api_url(&url),
            gitlab::repo_path(&url).map_err(e)?
        ),
        "azure-devops" => {
            let r = azure_devops::repo_path(&url).map_err(e)?;
            format!("azure-devops {} {}/{}", r.collection_url, r.project, r.repo)
        }
        "bitbucket" => {
            let (ws, repo) = cloud::repo_path(&url).map_err(e)?;
            format!("bitbucket {} {ws}/{repo}", cloud::api_base(None))
        }
        "bitbucket-server" => {
            let r = server::repo_path(&url).map_err(e)?;
            format!(
                "bitbucket-server {} {}/{}",
                server::rest_base(None, &r),
                r.project,
                r.slug
            )
        }
        "gitea" => {
            let r = gitea::repo_path(&url).map_err(e)?;
            let api = gitea::default_api_url(&url).map_err(e)?;
            format!("gitea {api} {}/{}", r.owner, r.repo)
        }
        "forgejo" => {
            let r = forgejo::repo_path(&url).map_err(e)?;
            let api = forgejo::default_api_url(&url).map_err(e)?;
            format!("forgejo {api} {}/{}", r.owner, r.repo)
        }
        other => return Err(format!("{other}: not in this table")),
    })
}

#[test]
fn real_world_git_urls() {
    let (github, gitlab, azure, bitbucket, bbs, gitea, forgejo) = (
        Some(github::SPEC.provider()),
        Some(gitlab::SPEC.provider()),
        Some(azure_devops::SPEC.provider()),
        Some(cloud::SPEC.provider()),
        Some(server::SPEC.provider()),
        Some(gitea::SPEC.provider()),
        Some(forgejo::SPEC.provider()),
    );
    let bb = |r: &str| format!("bitbucket https://api.bitbucket.org/2.0 {r}");
    let gh = |r: &str| format!("github https://api.github.com {r}");
    let ok: Vec<(&str, Option<Provider>, String)> = vec![
        // GitHub
        (
            "https://github.com/fluxcd/flux-get-started",
            None,
            gh("fluxcd/flux-get-started"),
        ),
        (
            "https://github.com/fluxcd/flux-get-started.git",
            None,
            gh("fluxcd/flux-get-started"),
        ),
        (
            "https://github.com/fluxcd/flux-get-started/",
            None,
            gh("fluxcd/flux-get-started"),
        ),
        (
            "git@github.com:fluxcd/flux-get-started.git",
            None,
            gh("fluxcd/flux-get-started"),
        ),
        (
            "git@github.com:fluxcd/flux-get-started",
            None,
            gh("fluxcd/flux-get-started"),
        ),
        (
            "ssh://git@github.com/fluxcd/flux-get-started.git",
            None,
            gh("fluxcd/flux-get-started"),
        ),
        (
            "ssh://git@ssh.github.com:443/fluxcd/flux-get-started.git",
            None,
            gh("fluxcd/flux-get-started"),
        ),
        (
            "https://x-access-token:ghs_secret@github.com/acme/app.git",
            None,
            gh("acme/app"),
        ),
        (
            "https://github.com/acme/my.dotted.repo.git",
            None,
            gh("acme/my.dotted.repo"),
        ),
        ("https://github.com/acme/app.js", None, gh("acme/app.js")),
        ("git://github.com/acme/app.git", None, gh("acme/app")),
        ("HTTPS://GitHub.com/Acme/App", None, gh("Acme/App")),
        (
            "git@github.example.com:platform/gitops.git",
            github,
            "github https://github.example.com/api/v3 platform/gitops".into(),
        ),
        (
            "https://github.example.com:8443/platform/gitops",
            github,
            "github https://github.example.com:8443/api/v3 platform/gitops".into(),
        ),
        (
            "ssh://git@github.example.com:2222/platform/gitops.git",
            github,
            "github https://github.example.com/api/v3 platform/gitops".into(),
        ),
        // GitLab
        (
            "https://gitlab.com/acme/app.git",
            None,
            "gitlab https://gitlab.com acme/app".into(),
        ),
        (
            "git@gitlab.com:acme/app.git",
            None,
            "gitlab https://gitlab.com acme/app".into(),
        ),
        (
            "https://gitlab.com/acme/platform/team/app.git",
            None,
            "gitlab https://gitlab.com acme/platform/team/app".into(),
        ),
        (
            "git@gitlab.com:acme/platform/team/app.git",
            None,
            "gitlab https://gitlab.com acme/platform/team/app".into(),
        ),
        (
            "ssh://git@gitlab.com/acme/platform/app.git",
            None,
            "gitlab https://gitlab.com acme/platform/app".into(),
        ),
        (
            "ssh://git@altssh.gitlab.com:443/acme/app.git",
            None,
            "gitlab https://gitlab.com acme/app".into(),
        ),
        (
            "https://oauth2:glpat-secret@gitlab.com/acme/app.git",
            None,
            "gitlab https://gitlab.com acme/app".into(),
        ),
        (
            "https://gitlab.com/acme/my.project",
            None,
            "gitlab https://gitlab.com acme/my.project".into(),
        ),
        (
            "https://gitlab.com/1234",
            None,
            "gitlab https://gitlab.com 1234".into(),
        ),
        (
            "https://git.example.com/infra/clusters/prod.git",
            gitlab,
            "gitlab https://git.example.com infra/clusters/prod".into(),
        ),
        (
            "git@git.example.com:infra/clusters/prod.git",
            gitlab,
            "gitlab https://git.example.com infra/clusters/prod".into(),
        ),
        (
            "http://gitlab.internal:8080/infra/prod.git",
            gitlab,
            "gitlab http://gitlab.internal:8080 infra/prod".into(),
        ),
        // Azure DevOps Services
        (
            "https://dev.azure.com/acme/Platform/_git/gitops",
            None,
            "azure-devops https://dev.azure.com/acme Platform/gitops".into(),
        ),
        (
            "https://acme@dev.azure.com/acme/Platform/_git/gitops",
            None,
            "azure-devops https://dev.azure.com/acme Platform/gitops".into(),
        ),
        (
            "https://acme:pat-secret@dev.azure.com/acme/Platform/_git/gitops",
            None,
            "azure-devops https://dev.azure.com/acme Platform/gitops".into(),
        ),
        (
            "https://dev.azure.com/acme/My%20Project/_git/My%20Repo",
            None,
            "azure-devops https://dev.azure.com/acme My Project/My Repo".into(),
        ),
        (
            "https://dev.azure.com/acme/_git/gitops",
            None,
            "azure-devops https://dev.azure.com/acme gitops/gitops".into(),
        ),
        (
            "git@ssh.dev.azure.com:v3/acme/Platform/gitops",
            None,
            "azure-devops https://dev.azure.com/acme Platform/gitops".into(),
        ),
        (
            "ssh://git@ssh.dev.azure.com/v3/acme/Platform/gitops",
            None,
            "azure-devops https://dev.azure.com/acme Platform/gitops".into(),
        ),
        (
            "ssh://git@ssh.dev.azure.com:22/v3/acme/My%20Project/gitops",
            None,
            "azure-devops https://dev.azure.com/acme My Project/gitops".into(),
        ),
        (
            "https://acme.visualstudio.com/Platform/_git/gitops",
            None,
            "azure-devops https://acme.visualstudio.com Platform/gitops".into(),
        ),
        (
            "https://acme.visualstudio.com/DefaultCollection/Platform/_git/gitops",
            None,
            "azure-devops https://acme.visualstudio.com/DefaultCollection Platform/gitops".into(),
        ),
        (
            "acme@vs-ssh.visualstudio.com:v3/acme/Platform/gitops",
            None,
            "azure-devops https://acme.visualstudio.com Platform/gitops".into(),
        ),
        // Azure DevOps Server
        (
            "https://tfs.example.com/tfs/DefaultCollection/Platform/_git/gitops",
            azure,
            "azure-devops https://tfs.example.com/tfs/DefaultCollection Platform/gitops".into(),
        ),
        (
            "https://ado.example.com/Fabrikam/Platform/_git/gitops",
            azure,
            "azure-devops https://ado.example.com/Fabrikam Platform/gitops".into(),
        ),
        (
            "https://ado.example.com:8443/tfs/My%20Collection/Platform/_git/gitops",
            azure,
            "azure-devops https://ado.example.com:8443/tfs/My%20Collection Platform/gitops".into(),
        ),
        (
            "ssh://ado.example.com:22/tfs/DefaultCollection/Platform/_git/gitops",
            azure,
            "azure-devops https://ado.example.com/tfs/DefaultCollection Platform/gitops".into(),
        ),
        // Bitbucket Cloud: the clone URLs it shows carry the user name.
        (
            "https://jdoe@bitbucket.org/acme/gitops.git",
            None,
            bb("acme/gitops"),
        ),
        ("git@bitbucket.org:acme/gitops.git", None, bb("acme/gitops")),
        ("https://bitbucket.org/acme/gitops", None, bb("acme/gitops")),
        (
            "https://x-token-auth:secret@bitbucket.org/acme/gitops.git",
            None,
            bb("acme/gitops"),
        ),
        (
            "ssh://git@altssh.bitbucket.org:443/acme/gitops.git",
            None,
            bb("acme/gitops"),
        ),
        // Cloud has no other host; --provider bitbucket names it wherever a mirror lives.
        (
            "https://git.example.com/acme/gitops.git",
            bitbucket,
            bb("acme/gitops"),
        ),
        // Bitbucket Server / Data Center
        (
            "https://git.example.com/scm/PROJ/gitops.git",
            bbs,
            "bitbucket-server https://git.example.com/rest PROJ/gitops".into(),
        ),
        (
            "https://git.example.com/bitbucket/scm/proj/gitops.git",
            bbs,
            "bitbucket-server https://git.example.com/bitbucket/rest proj/gitops".into(),
        ),
        (
            "https://jdoe@git.example.com:8443/tools/bitbucket/scm/proj/gitops.git",
            bbs,
            "bitbucket-server https://git.example.com:8443/tools/bitbucket/rest proj/gitops".into(),
        ),
        (
            "http://git.internal:7990/scm/PROJ/gitops.git",
            bbs,
            "bitbucket-server http://git.internal:7990/rest PROJ/gitops".into(),
        ),
        (
            "ssh://git@git.example.com:7999/proj/gitops.git",
            bbs,
            "bitbucket-server https://git.example.com/rest proj/gitops".into(),
        ),
        (
            "git@git.example.com:proj/gitops.git",
            bbs,
            "bitbucket-server https://git.example.com/rest proj/gitops".into(),
        ),
        (
            "https://git.example.com/scm/~jdoe/dotfiles.git",
            bbs,
            "bitbucket-server https://git.example.com/rest ~jdoe/dotfiles".into(),
        ),
        (
            "ssh://git@git.example.com:7999/~jdoe/dotfiles.git",
            bbs,
            "bitbucket-server https://git.example.com/rest ~jdoe/dotfiles".into(),
        ),
        // Gitea: gitea.com, self-hosted at the root or under a sub-path, ssh on its own port.
        (
            "https://gitea.com/acme/app.git",
            None,
            "gitea https://gitea.com/api/v1 acme/app".into(),
        ),
        (
            "https://git.example.com/acme/app.git",
            gitea,
            "gitea https://git.example.com/api/v1 acme/app".into(),
        ),
        (
            "https://git.example.com/sub/path/acme/app.git",
            gitea,
            "gitea https://git.example.com/sub/path/api/v1 acme/app".into(),
        ),
        (
            "http://gitea.internal:3000/acme/app.git",
            gitea,
            "gitea http://gitea.internal:3000/api/v1 acme/app".into(),
        ),
        (
            "https://flux:secret-token@git.example.com/acme/my.app.git",
            gitea,
            "gitea https://git.example.com/api/v1 acme/my.app".into(),
        ),
        (
            "git@git.example.com:acme/app.git",
            gitea,
            "gitea https://git.example.com/api/v1 acme/app".into(),
        ),
        (
            "ssh://git@git.example.com:2222/acme/app.git",
            gitea,
            "gitea https://git.example.com/api/v1 acme/app".into(),
        ),
        // Forgejo: codeberg.org detected, self-hosted by --provider.
        (
            "https://codeberg.org/acme/app.git",
            None,
            "forgejo https://codeberg.org/api/v1 acme/app".into(),
        ),
        (
            "git@codeberg.org:acme/app.git",
            None,
            "forgejo https://codeberg.org/api/v1 acme/app".into(),
        ),
        (
            "ssh://git@codeberg.org/acme/app.git",
            None,
            "forgejo https://codeberg.org/api/v1 acme/app".into(),
        ),
        (
            "https://forge.example.com/acme/app.git",
            forgejo,
            "forgejo https://forge.example.com/api/v1 acme/app".into(),
        ),
        (
            "https://forge.example.com/sub/path/acme/app.git",
            forgejo,
            "forgejo https://forge.example.com/sub/path/api/v1 acme/app".into(),
        ),
        (
            "git@forge.example.com:acme/app.git",
            forgejo,
            "forgejo https://forge.example.com/api/v1 acme/app".into(),
        ),
        (
            "ssh://git@forge.example.com:2222/acme/app.git",
            forgejo,
            "forgejo https://forge.example.com/api/v1 acme/app".into(),
        ),
    ];
    let err: Vec<(&str, Option<Provider>, &str)> = vec![
        ("", None, "git URL is empty"),
        ("github.com/acme/app", None, "not a git URL"),
        ("file:///srv/git/app.git", None, "unsupported URL scheme \"file\""),
        (
            "https://github.com/acme",
            None,
            "GitHub repository path must look like <owner>/<repo>",
        ),
        (
            "https://github.com/acme/app/tree/main",
            None,
            "GitHub repository path must look like <owner>/<repo>",
        ),
        (
            "https://gitlab.com/acme",
            None,
            "GitLab repository path must look like",
        ),
        (
            "https://gitlab.com/acme/app/-/tree/main",
            None,
            "GitLab repository path must look like",
        ),
        (
            "https://dev.azure.com/acme/Platform/gitops",
            None,
            "Azure DevOps repository path must look like",
        ),
        (
            "git@ssh.dev.azure.com:v2/acme/Platform/gitops",
            None,
            "Azure DevOps repository path must look like",
        ),
        (
            "https://ado.example.com/_git/gitops",
            azure,
            "Azure DevOps repository path must look like",
        ),
        (
            "https://git.example.com/infra/prod.git",
            None,
            "cannot tell the provider of git.example.com",
        ),
        ("https://github.com:99999/acme/app", None, "port \"99999\""),
        ("https://github.com", None, "no repository path"),
        (
            "https://bitbucket.org/acme",
            None,
            "Bitbucket Cloud repository path must look like <workspace>/<repo>",
        ),
        (
            "https://bitbucket.org/acme/gitops/src/main/",
            None,
            "Bitbucket Cloud repository path must look like <workspace>/<repo>",
        ),
        (
            "https://git.example.com/scm/gitops.git",
            None,
            "cannot tell the provider of git.example.com",
        ),
        (
            "https://git.example.com/scm/gitops.git",
            bbs,
            "Bitbucket Server repository path must look like [<context>/]scm/<project>/<repo>",
        ),
        (
            "https://git.example.com/PROJ/gitops.git",
            bbs,
            "Bitbucket Server repository path must look like",
        ),
        (
            "ssh://git@git.example.com:7999/scm/proj/gitops.git",
            bbs,
            "Bitbucket Server repository path must look like",
        ),
        (
            "https://git.example.com/scm/~/gitops.git",
            bbs,
            "Bitbucket Server repository path must look like",
        ),
        (
            "ssh://git@git.example.com:79999/proj/gitops.git",
            bbs,
            "port \"79999\"",
        ),
        (
            "https://git.example.com/acme",
            gitea,
            "Gitea repository path must look like [<sub-path>/]<owner>/<repo>",
        ),
        (
            "git@git.example.com:sub/acme/app.git",
            gitea,
            "Gitea repository path must look like",
        ),
        (
            "https://codeberg.org/acme/app/src/branch/main",
            None,
            "Forgejo repository path must look like",
        ),
        (
            "https://codeberg.org/acme/app/commit/9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1",
            None,
            "Forgejo repository path must look like",
        ),
        (
            "ssh://git@forge.example.com:2222/acme",
            forgejo,
            "Forgejo repository path must look like",
        ),
        ("git@codeberg.org:", None, "no repository path"),
        ("https://codeberg.org:70000/acme/app", None, "port \"70000\""),
    ];
    assert!(ok.len() + err.len() >= 40, "at least 40 forms");
    for (input, explicit, want) in ok {
        assert_eq!(resolve(input, explicit).as_deref(), Ok(want.as_str()), "{input}");
    }
    for (input, explicit, want) in err {
        let got = resolve(input, explicit).expect_err(input);
        assert!(got.contains(want), "{input}: {got:?} should say {want:?}");
    }
}

#[test]
fn user_info_never_survives_into_anything_printable() {
    for input in [
        "https://x-access-token:ghs_secret@github.com/acme/app.git",
        "https://oauth2:glpat-secret@gitlab.com/acme/app.git",
        "https://acme:pat-secret@dev.azure.com/acme/Platform/_git/gitops",
        "https://x-token-auth:bb-secret@bitbucket.org/acme/gitops.git",
        "https://flux:secret@codeberg.org/acme/app.git",
    ] {
        let url = GitUrl::parse(input).unwrap();
        let printed = format!("{url} {url:?} {}", resolve(input, None).unwrap());
        assert!(!printed.contains("secret"), "{printed}");
    }
}

proptest::proptest! {
    #[test]
    fn no_input_makes_any_provider_panic(s in "\\PC{0,100}") {
        if let Ok(url) = GitUrl::parse(&s) {
            let _ = github::repo_path(&url);
            let _ = gitlab::repo_path(&url);
            let _ = azure_devops::repo_path(&url);
            let _ = cloud::repo_path(&url);
            let _ = server::repo_path(&url);
            let _ = gitea::default_api_url(&url);
            let _ = forgejo::default_api_url(&url);
        }
    }

    #[test]
    fn azure_shaped_input_never_panics(
        host in "(dev\\.azure\\.com|ssh\\.dev\\.azure\\.com|[a-z]{1,5}\\.visualstudio\\.com|vs-ssh\\.visualstudio\\.com|h)",
        segs in proptest::collection::vec("(_git|v3|DefaultCollection|[a-z%0-9]{0,4})", 0..7),
    ) {
        let s = format!("https://{host}/{}", segs.join("/"));
        if let Ok(url) = GitUrl::parse(&s) {
            let _ = azure_devops::repo_path(&url);
        }
    }

    #[test]
    fn bitbucket_server_shaped_input_never_panics(
        scheme in "(https://|ssh://git@|git@)",
        segs in proptest::collection::vec("(scm|~|~[a-z]{0,3}|[a-z%0-9.]{0,4})", 0..6),
    ) {
        let sep = if scheme == "git@" { ":" } else { "/" };
        let s = format!("{scheme}h{sep}{}", segs.join("/"));
        if let Ok(url) = GitUrl::parse(&s) {
            let _ = server::repo_path(&url).map(|r| server::rest_base(None, &r));
        }
    }
}
