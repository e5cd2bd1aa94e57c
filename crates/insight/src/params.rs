//! Bind parameters as seen by the proxy, and how they are shown: not at all,
//! redacted to their type and length, or in full.

use serde::{Deserialize, Serialize};

/// At most this many parameters are rendered per statement; the rest are
/// summarized as one `"… N more"` item.
pub const MAX_RENDERED_PARAMS: usize = 32;
/// A value shown in full is cut after this many bytes.
pub const MAX_RENDERED_VALUE_BYTES: usize = 256;

/// Wire format code of a bind parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamFormat {
    Text,
    Binary,
}

/// One bind parameter, borrowed from the Bind message.
#[derive(Debug, Clone, Copy)]
pub struct ParamRef<'a> {
    /// `None` is SQL NULL.
    pub value: Option<&'a [u8]>,
    pub format: ParamFormat,
    /// Parameter type OID from Parse, 0 when unspecified.
    pub type_oid: u32,
}

impl<'a> ParamRef<'a> {
    /// A text-format parameter of unspecified type.
    pub fn text(value: &'a str) -> Self {
        ParamRef {
            value: Some(value.as_bytes()),
            format: ParamFormat::Text,
            type_oid: 0,
        }
    }

    /// SQL NULL.
    pub fn null() -> Self {
        ParamRef {
            value: None,
            format: ParamFormat::Text,
            type_oid: 0,
        }
    }
}

/// How parameter values appear in logs and snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamMode {
    /// Parameters are not captured at all.
    Off,
    /// Each parameter is replaced by its type and length: `<text 12 bytes>`.
    #[default]
    Redacted,
    /// Values are shown (text as UTF-8, binary as hex), cut at 256 bytes.
    Full,
}

/// Renders parameters per `mode`; `None` when the mode is `Off`.
pub(crate) fn render_params(params: &[ParamRef<'_>], mode: ParamMode) -> Option<Vec<String>> {
    if mode == ParamMode::Off {
        return None;
    }
    let shown = params.len().min(MAX_RENDERED_PARAMS);
    let mut out = Vec::with_capacity(shown + 1);
    out.extend(params[..shown].iter().map(|p| render_param(p, mode)));
    if params.len() > shown {
        out.push(format!("… {} more", params.len() - shown));
    }
    Some(out)
}

fn render_param(param: &ParamRef<'_>, mode: ParamMode) -> String {
    let Some(value) = param.value else {
        return "NULL".to_owned();
    };
    match mode {
        ParamMode::Off | ParamMode::Redacted => {
            let ty = type_name(param.type_oid).unwrap_or(match param.format {
                ParamFormat::Text => "text",
                ParamFormat::Binary => "binary",
            });
            let unit = if value.len() == 1 { "byte" } else { "bytes" };
            format!("<{ty} {} {unit}>", value.len())
        }
        ParamMode::Full => {
            let cut = &value[..value.len().min(MAX_RENDERED_VALUE_BYTES)];
            let mut s = match param.format {
                ParamFormat::Text => String::from_utf8_lossy(cut).into_owned(),
                ParamFormat::Binary => {
                    let mut s = String::with_capacity(2 + cut.len() * 2);
                    s.push_str("\\x");
                    for b in cut {
                        s.push_str(&format!("{b:02x}"));
                    }
                    s
                }
            };
            if cut.len() < value.len() {
                s.push('…');
            }
            s
        }
    }
}

/// Names of common built-in types, for redacted rendering.
fn type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "bool",
        17 => "bytea",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        114 => "json",
        700 => "float4",
        701 => "float8",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1114 => "timestamp",
        1184 => "timestamptz",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_shows_type_and_length_only() {
        let params = [
            ParamRef::text("alice@example"),
            ParamRef::null(),
            ParamRef {
                value: Some(&[0, 0, 0, 42]),
                format: ParamFormat::Binary,
                type_oid: 23,
            },
            ParamRef {
                value: Some(&[1]),
                format: ParamFormat::Binary,
                type_oid: 0,
            },
        ];
        let out = render_params(&params, ParamMode::Redacted).unwrap_or_default();
        assert_eq!(
            out,
            [
                "<text 13 bytes>",
                "NULL",
                "<int4 4 bytes>",
                "<binary 1 byte>"
            ]
        );
    }

    #[test]
    fn full_shows_values_and_cuts_long_ones() {
        let long = "x".repeat(300);
        let params = [
            ParamRef::text("alice"),
            ParamRef {
                value: Some(&[0xde, 0xad]),
                format: ParamFormat::Binary,
                type_oid: 17,
            },
            ParamRef::text(&long),
        ];
        let out = render_params(&params, ParamMode::Full).unwrap_or_default();
        assert_eq!(out[0], "alice");
        assert_eq!(out[1], "\\xdead");
        assert_eq!(out[2], format!("{}…", "x".repeat(256)));
        assert_eq!(render_params(&params, ParamMode::Off), None);
    }

    #[test]
    fn many_params_are_summarized() {
        let params = vec![ParamRef::text("1"); 40];
        let out = render_params(&params, ParamMode::Redacted).unwrap_or_default();
        assert_eq!(out.len(), MAX_RENDERED_PARAMS + 1);
        assert_eq!(out[MAX_RENDERED_PARAMS], "… 8 more");
    }
}
