//! Workload query parameters and their binary encoding, so the crate needs no date
//! library: dates and timestamps are sent as PostgreSQL's own day and microsecond
//! counts.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::calendar::{days_from_civil, DAY};

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAY: i64 = days_from_civil(2000, 1, 1);

/// One bound parameter of a workload query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    /// Sent as the parameter's integer type (int2, int4 or int8).
    Int(i64),
    /// Sent as text (text, varchar, name, unknown).
    Text(String),
    /// A `date`: days since 1970-01-01.
    Date(i64),
    /// A `timestamptz`: seconds since 1970-01-01 UTC.
    Timestamp(i64),
}

impl Param {
    fn kind(&self) -> &'static str {
        match self {
            Param::Int(_) => "integer",
            Param::Text(_) => "text",
            Param::Date(_) => "date",
            Param::Timestamp(_) => "timestamp",
        }
    }
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Param::Int(v) if *ty == Type::INT8 => out.put_i64(*v),
            Param::Int(v) if *ty == Type::INT4 => out.put_i32(i32::try_from(*v)?),
            Param::Int(v) if *ty == Type::INT2 => out.put_i16(i16::try_from(*v)?),
            Param::Text(s) if is_text(ty) => out.put_slice(s.as_bytes()),
            Param::Date(day) if *ty == Type::DATE => {
                out.put_i32(i32::try_from(day - PG_EPOCH_DAY)?)
            }
            Param::Timestamp(secs) if *ty == Type::TIMESTAMPTZ || *ty == Type::TIMESTAMP => {
                out.put_i64((secs - PG_EPOCH_DAY * DAY) * 1_000_000)
            }
            _ => return Err(format!("cannot send a {} parameter as {ty}", self.kind()).into()),
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::INT2,
            Type::INT4,
            Type::INT8,
            Type::DATE,
            Type::TIMESTAMP,
            Type::TIMESTAMPTZ,
        ]
        .contains(ty)
            || is_text(ty)
    }

    to_sql_checked!();
}

fn is_text(ty: &Type) -> bool {
    [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
    ]
    .contains(ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::DATA_START_UNIX;

    fn encode(param: &Param, ty: &Type) -> Result<Vec<u8>, String> {
        let mut out = BytesMut::new();
        param
            .to_sql_checked(ty, &mut out)
            .map(|_| out.to_vec())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn integers_follow_the_parameter_type() {
        assert_eq!(
            encode(&Param::Int(3), &Type::INT8).unwrap(),
            3i64.to_be_bytes()
        );
        assert_eq!(
            encode(&Param::Int(3), &Type::INT2).unwrap(),
            3i16.to_be_bytes()
        );
        assert!(encode(&Param::Int(1 << 40), &Type::INT4).is_err());
    }

    #[test]
    fn dates_and_timestamps_count_from_2000() {
        assert_eq!(
            encode(&Param::Date(PG_EPOCH_DAY), &Type::DATE).unwrap(),
            0i32.to_be_bytes()
        );
        let micros = (DATA_START_UNIX - 946_684_800) * 1_000_000;
        assert_eq!(
            encode(&Param::Timestamp(DATA_START_UNIX), &Type::TIMESTAMPTZ).unwrap(),
            micros.to_be_bytes()
        );
    }

    #[test]
    fn mismatched_types_are_refused() {
        assert!(encode(&Param::Text("x".into()), &Type::INT8).is_err());
        assert!(encode(&Param::Date(0), &Type::TEXT).is_err());
    }
}
