//! Sessions: a conversation named by `x-session-id` keeps its KV across turns, restarts and
//! evictions. After every turn the sequence's state (its KV cells and the tokens they hold)
//! is written to `<data_dir>/sessions/<deployment>/<id>.kv` (llama.cpp's sequence state
//! file; written to a temporary name and renamed, so a crash never leaves half a file).
//! While the conversation is hot, the prefix cache serves it from memory; when the next turn
//! finds less there than in the session's file (evicted, or after a restart), the file is
//! loaded into the request's sequence, checked against the new prompt, and trimmed to their
//! longest common prefix, so an edited history reuses what still matches.
//!
//! The id is already bound to the API key that named it (the router hashes key and id), so
//! another key can never reach it. Knobs: `session_ttl_secs` (an idle session older than
//! this is deleted, default one day) and `max_sessions` (past it the least recently used
//! files go, default 1,000), per local deployment.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::token::LlamaToken;

use super::prefix::MIN_REUSE;

pub struct SessionFiles {
    pub dir: PathBuf,
    pub ttl: Duration,
    pub max: usize,
    /// Tokens each file written or read by this process holds, so a file that cannot beat
    /// what memory already covers is not loaded (and the slot's KV is not disturbed).
    pub known: HashMap<String, usize>,
}

/// What [`SessionFiles::restore`] did to the sequence.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// Nothing: no file, or one that cannot cover more than memory does.
    Untouched,
    /// The file's KV now covers this many prompt tokens.
    Tokens(usize),
    /// The file was tried and not used: the sequence is empty.
    Cleared,
}

impl SessionFiles {
    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.kv"))
    }

    fn fresh(&self, p: &std::path::Path) -> bool {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age <= self.ttl)
    }

    /// Loads the session into `seq` when it shares more than `at_least` tokens with
    /// `prompt` (its KV then covers at most all prompt tokens but one).
    pub fn restore(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        id: &str,
        seq: i32,
        prompt: &[LlamaToken],
        at_least: usize,
    ) -> Restored {
        let p = self.path(id);
        if !p.exists() {
            return Restored::Untouched;
        }
        if !self.fresh(&p) {
            let _ = std::fs::remove_file(&p);
            self.known.remove(id);
            return Restored::Untouched;
        }
        if self.known.get(id).is_some_and(|&n| n.min(prompt.len().saturating_sub(1)) <= at_least) {
            return Restored::Untouched;
        }
        let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
        let loaded = ctx.state_seq_load_file(&p, seq, prompt.len() + 65_536);
        let tokens = match loaded {
            Ok((tokens, _)) => tokens,
            Err(e) => {
                tracing::warn!(session = id, error = %e, "a session file could not be restored; it is dropped");
                let _ = std::fs::remove_file(&p);
                self.known.remove(id);
                let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
                return Restored::Cleared;
            }
        };
        self.known.insert(id.to_owned(), tokens.len());
        let common = tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let reuse = common.min(prompt.len().saturating_sub(1));
        if reuse < MIN_REUSE.max(at_least + 1) {
            let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            return Restored::Cleared;
        }
        // Keep only the common prefix: an edited history recomputes from where it differs.
        if ctx.clear_kv_cache_seq(Some(seq as u32), Some(reuse as u32), None).is_err() {
            let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            return Restored::Cleared;
        }
        Restored::Tokens(reuse)
    }

    /// Writes the sequence's state after a turn, and keeps the directory within its caps.
    pub fn save(&mut self, ctx: &LlamaContext<'_>, id: &str, seq: i32, tokens: &[LlamaToken]) {
        if std::fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        let p = self.path(id);
        let tmp = self.dir.join(format!("{id}.kv.tmp"));
        match ctx.state_seq_save_file(&tmp, seq, tokens) {
            Ok(_) => match std::fs::rename(&tmp, &p) {
                Ok(()) => {
                    self.known.insert(id.to_owned(), tokens.len());
                }
                Err(e) => tracing::warn!(session = id, error = %e, "a session file could not be written"),
            },
            Err(e) => {
                tracing::warn!(session = id, error = %e, "a session's state could not be saved");
                let _ = std::fs::remove_file(&tmp);
            }
        }
        self.prune();
    }

    /// Deletes expired session files and, past `max`, the least recently used.
    fn prune(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(SystemTime, PathBuf)> = rd
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "kv"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.retain(|(_, p)| {
            let keep = self.fresh(p);
            if !keep {
                let _ = std::fs::remove_file(p);
            }
            keep
        });
        if files.len() > self.max {
            files.sort();
            for (_, p) in &files[..files.len() - self.max] {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}
