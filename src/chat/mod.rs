//! A model's chat format, in text, both ways: the Jinja chat template that renders OpenAI
//! messages (and tools) into a prompt ([`template`]), and the syntax a model answers tool
//! calls and reasoning in, parsed back into OpenAI's shapes ([`tools`]). Pure: no engine, no
//! I/O; the embedded engine renders with it and constrains decoding from it.

pub mod reasoning;
pub mod schema;
pub mod template;
pub mod tools;
