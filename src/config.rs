//! Configuration: load (TOML file) -> parse (serde) -> validate (every error reported at once).
//! No tokio, no hyper.
