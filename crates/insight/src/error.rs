/// Errors of the insight crate: only configuration can fail; recording never
/// returns an error.
#[derive(Debug, thiserror::Error)]
pub enum InsightError {
    #[error("invalid insight setting `{key}` = {value}: expected {expected}")]
    InvalidConfig {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}
