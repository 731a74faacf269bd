//! A Flux v2 event body: decoded and mapped, or refused, never a panic; an accepted
//! event names its object.
#![no_main]

use flux_status::fluxv2::event::parse;
use flux_status::fluxv2::map::{DEFAULT_CHECK_TEMPLATE, V2Context, map};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = parse(data) else { return };
    assert!(!event.involved_object.kind.is_empty() && !event.involved_object.name.is_empty());
    let _ = (event.revision(), event.meta("commit_status"));
    let ctx = V2Context {
        rules: Vec::new(),
        fallback: Some("github.com/o/r".into()),
        instance: "fuzz".into(),
        check_template: DEFAULT_CHECK_TEMPLATE.into(),
        target_url: None,
    };
    let _ = map(&event, &ctx);
});
