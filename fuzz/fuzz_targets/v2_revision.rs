//! A Flux v2 revision (`main@sha1:<sha>`, `main/<sha>`, `<sha>`, digests, chart
//! versions): a commit or a reason why not; a commit is the revision's own tail.
#![no_main]

use flux_status::fluxv2::event::parse_revision;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|rev: &str| {
    if let Ok(sha) = parse_revision(rev) {
        assert!(
            rev.to_ascii_lowercase().ends_with(sha.as_str()),
            "{rev:?} -> {sha}"
        );
    }
});
