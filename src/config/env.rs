//! `${VAR}` references in config values: secrets (never printed) and plain values read
//! from the environment, with the file and key named when one is missing.

#[allow(unused_imports)]
use super::*;

/// `"${VAR}"` → the variable's value. Anything else is a literal.
pub(super) fn env_ref(value: &str) -> Option<&str> {
    value.strip_prefix("${")?.strip_suffix('}')
}

/// A secret must be an environment reference; a literal is refused with how to fix it.
pub(super) fn secret(value: &str, file: &str, key: &str, env: Env<'_>, errs: &mut Vec<String>) -> Option<Secret> {
    match env_ref(value) {
        Some(var) => match env(var) {
            Some(v) if !v.is_empty() => Some(Secret(v)),
            _ => {
                errs.push(format!("{file}: {key}: the environment variable {var} is not set"));
                None
            }
        },
        None => {
            errs.push(format!(
                "{file}: {key}: a literal secret is not allowed in a config file; export it as an \
                 environment variable (e.g. TOLLGATE_SECRET=...) and write {key} = \"${{TOLLGATE_SECRET}}\""
            ));
            None
        }
    }
}

/// A non-secret value that may still come from the environment (paths, URLs).
pub(super) fn plain(value: &str, file: &str, key: &str, env: Env<'_>, errs: &mut Vec<String>) -> Option<String> {
    match env_ref(value) {
        Some(var) => match env(var) {
            Some(v) => Some(v),
            None => {
                errs.push(format!("{file}: {key}: the environment variable {var} is not set"));
                None
            }
        },
        None => Some(value.to_owned()),
    }
}
