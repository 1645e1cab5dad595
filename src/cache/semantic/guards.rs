//! PLACEHOLDER until the guards branch lands (replaced by the real lexical guards).

/// Lexical signature of a prompt.
#[derive(Debug, Clone, Default)]
pub struct Signature;

impl Signature {
    /// The signature of `text`.
    pub fn of(_text: &str) -> Self {
        Self
    }
}

/// What disagreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Numbers differ.
    Numbers,
}

impl Mismatch {
    /// Label.
    pub fn as_str(self) -> &'static str {
        "numbers"
    }
}

/// Whether two signatures agree.
pub fn agree(_a: &Signature, _b: &Signature) -> Result<(), Mismatch> {
    Ok(())
}
