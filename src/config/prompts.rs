//! `prompts/`: named prompt templates, one file each.

#[allow(unused_imports)]
use super::*;

/// `prompts/NAME.txt` or `prompts/NAME@VERSION.txt` (or `.md`): named system prompts.
pub(super) fn load_prompts(dir: &Path, errs: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Some(ext) = p.extension().and_then(|x| x.to_str()) else {
            continue;
        };
        if !matches!(ext, "txt" | "md") {
            continue;
        }
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if stem.eq_ignore_ascii_case("readme") {
            continue;
        }
        match std::fs::read_to_string(&p) {
            Ok(t) => {
                out.insert(stem.to_owned(), t);
            }
            Err(err) => errs.push(format!("{}: cannot read: {err}", p.display())),
        }
    }
    out
}
