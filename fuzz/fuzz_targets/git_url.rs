//! `--git-url` and `--config` URLs: parsed or refused, never a panic; what a parsed
//! URL prints parses back to the same repository and never holds its user info.
#![no_main]

use libfuzzer_sys::fuzz_target;
use notifiers::GitUrl;

fuzz_target!(|input: &str| {
    let Ok(url) = GitUrl::parse(input) else { return };
    let shown = url.to_string();
    let _ = (url.repo_segments(), url.web_origin(), format!("{url:?}"));
    let after_scheme = input.split_once("://").map_or(input, |(_, rest)| rest);
    if let Some((user_info, rest)) = after_scheme.split_once('@') {
        let (user_info, rest) = (user_info.to_lowercase(), rest.to_lowercase());
        if user_info.len() >= 8 && !rest.contains(&user_info) {
            assert!(
                !shown.to_lowercase().contains(&user_info),
                "{input:?} shows its user info: {shown}"
            );
        }
    }
    // Decoded segments may hold what a URL cannot ('/', '?', spaces): only plain
    // ones must come back.
    let plain = url.segments.iter().all(|s| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-~".contains(&b))
    });
    if plain {
        let again = GitUrl::parse(&shown).expect("a printed URL parses");
        assert_eq!(
            (&again.host, again.port, &again.segments),
            (&url.host, url.port, &url.segments)
        );
    }
});
