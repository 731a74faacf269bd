//! Secrets from a flag, an environment variable or a file, wrapped at once so they
//! cannot be printed by accident.

use secrecy::SecretString;
use std::path::PathBuf;

pub struct SecretSource {
    value: Option<String>,
    file: Option<PathBuf>,
    flag: String,
}

impl SecretSource {
    pub fn new(value: Option<String>, file: Option<PathBuf>, flag: impl Into<String>) -> Self {
        SecretSource {
            value,
            file,
            flag: flag.into(),
        }
    }
}

/// Reads a secret. Files are trimmed: mounted Secrets often end in a newline.
/// Errors name the flag or file, never the contents.
pub fn load(what: &str, src: SecretSource) -> Result<Option<SecretString>, String> {
    let flag = &src.flag;
    let raw = match (src.value.filter(|v| !v.is_empty()), src.file) {
        (Some(_), Some(_)) => {
            return Err(format!("give the {what} by {flag} or {flag}-file, not both"));
        }
        (Some(v), None) => v,
        (None, Some(path)) => {
            std::fs::read_to_string(&path).map_err(|e| format!("{flag}-file {}: {e}", path.display()))?
        }
        (None, None) => return Ok(None),
    };
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(format!("the {what} given by {flag} is empty"));
    }
    Ok(Some(SecretString::from(trimmed.to_string())))
}

/// [`load`], with a problem added to `errors` so all are reported together.
pub fn load_or_report(what: &str, src: SecretSource, errors: &mut Vec<String>) -> Option<SecretString> {
    load(what, src).unwrap_or_else(|e| {
        errors.push(e);
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn file_contents_are_trimmed() {
        let dir = std::env::temp_dir().join(format!("flux-status-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "ghp_abc\n").unwrap();
        let s = load(
            "GitHub token",
            SecretSource::new(None, Some(f.clone()), "--github-token"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.expose_secret(), "ghp_abc");
        let both = load(
            "GitHub token",
            SecretSource::new(Some("x".into()), Some(f), "--github-token"),
        );
        assert!(both.unwrap_err().contains("not both"));
        let missing = load(
            "GitHub token",
            SecretSource::new(None, Some(dir.join("nope")), "--github-token"),
        );
        assert!(missing.unwrap_err().contains("--github-token-file"));
    }
}
