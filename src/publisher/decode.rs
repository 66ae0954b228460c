//! Tolerant decoding of the columns of the active-events and changed-events queries.
//!
//! Operators point oddsfeed at schemas we did not write: Prisma's `timestamp(3)` or
//! `timestamptz`, `Decimal` (`numeric`), `real`, integer or uuid ids, enums and `citext`. Each
//! column is decoded by its *actual* PostgreSQL type from the binary wire format, never by
//! asking the driver for one fixed Rust type, so a column type we did not foresee in a
//! supported family simply works, and a value no Rust type can hold (`'infinity'`, a year past
//! 9999, a numeric NaN) becomes a decoded value or a [`DecodeError::Value`], never a panic.
//!
//! Two kinds of failure, because they mean different things to an operator:
//! - [`DecodeError::Type`]: the column's type is not one oddsfeed can read in that role (a
//!   `jsonb` title). Every row has it, so it is a mistake in the query: the tick fails with a
//!   message that says which cast to add.
//! - [`DecodeError::Value`]: this one value cannot be used (invalid UTF-8 from a `bytea`-like
//!   type, a malformed numeric). Only its event is affected.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use sqlx::postgres::{PgRow, PgTypeKind, PgValueFormat, PgValueRef};
use sqlx::{Row, TypeInfo, ValueRef};

/// Built-in type OIDs (stable across PostgreSQL versions: they are in the default catalog).
mod oid {
    pub const BOOL: u32 = 16;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
}

/// Why a column's value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The column is missing from the result, or its type cannot serve this role.
    Type {
        column: &'static str,
        detail: String,
    },
    /// This value cannot be used; the column's type is fine.
    Value {
        column: &'static str,
        detail: String,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Type { column, detail } => {
                write!(f, "column {column:?} {detail} (see sql/README.md)")
            }
            DecodeError::Value { column, detail } => write!(f, "column {column:?}: {detail}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A decoded timestamp: in range, or outside what RFC 3339 can write (years 0000 to 9999),
/// which includes PostgreSQL's `infinity` and `-infinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp {
    At(DateTime<Utc>),
    OutOfRange,
}

/// The type family a column belongs to, from its PostgreSQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// text, varchar, char(n), name, citext, enums, "char", unknown.
    Text,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Bool,
    Uuid,
    Date,
    /// Microseconds since 2000-01-01; `timestamp` is read as UTC.
    Timestamp,
    Other,
}

fn family(value: &PgValueRef<'_>) -> Family {
    let info = value.type_info();
    // Built-in types (nearly every column) are decided by their OID without any allocation.
    if let Some(fam) = info.oid().and_then(|o| builtin_family(o.0)) {
        return fam;
    }
    let mut info = info.into_owned();
    // A domain reads as its base type.
    for _ in 0..8 {
        match info.kind() {
            PgTypeKind::Domain(base) => info = base.clone(),
            PgTypeKind::Enum(_) => return Family::Text,
            _ => break,
        }
    }
    match info.oid().and_then(|o| builtin_family(o.0)) {
        Some(fam) => fam,
        None if info.name().eq_ignore_ascii_case("citext") => Family::Text,
        None => Family::Other,
    }
}

fn builtin_family(oid: u32) -> Option<Family> {
    Some(match oid {
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN | oid::CHAR => {
            Family::Text
        }
        oid::INT2 => Family::Int2,
        oid::INT4 => Family::Int4,
        oid::INT8 => Family::Int8,
        oid::OID => Family::Oid,
        oid::FLOAT4 => Family::Float4,
        oid::FLOAT8 => Family::Float8,
        oid::NUMERIC => Family::Numeric,
        oid::BOOL => Family::Bool,
        oid::UUID => Family::Uuid,
        oid::DATE => Family::Date,
        oid::TIMESTAMP | oid::TIMESTAMPTZ => Family::Timestamp,
        _ => return None,
    })
}

/// The column's type name, for error messages only.
fn type_name(row: &PgRow, column: &str) -> String {
    row.try_get_raw(column)
        .map(|v| v.type_info().name().to_string())
        .unwrap_or_default()
}

/// The raw bytes of a column, `None` for SQL NULL, with the column's type family.
///
/// The query runs as a prepared statement, for which sqlx always asks for binary results; a
/// value in text format would mean a protocol change and is refused rather than misread.
fn raw<'r>(
    row: &'r PgRow,
    column: &'static str,
) -> Result<Option<(&'r [u8], Family)>, DecodeError> {
    let value = row.try_get_raw(column).map_err(|_| DecodeError::Type {
        column,
        detail: "is missing from the result".into(),
    })?;
    if value.is_null() {
        return Ok(None);
    }
    if value.format() != PgValueFormat::Binary {
        return Err(DecodeError::Type {
            column,
            detail: "arrived in text format; oddsfeed reads binary results".into(),
        });
    }
    let fam = family(&value);
    let bytes = value.as_bytes().map_err(|e| DecodeError::Value {
        column,
        detail: e.to_string(),
    })?;
    Ok(Some((bytes, fam)))
}

fn wrong_type(row: &PgRow, column: &'static str, wanted: &str, cast: &str) -> DecodeError {
    let type_name = type_name(row, column);
    DecodeError::Type {
        column,
        detail: format!(
            "has type {type_name}, which oddsfeed cannot read as {wanted}; cast it ({column}::{cast})"
        ),
    }
}

fn bad_value(column: &'static str, detail: impl Into<String>) -> DecodeError {
    DecodeError::Value {
        column,
        detail: detail.into(),
    }
}

fn fixed<const N: usize>(column: &'static str, bytes: &[u8]) -> Result<[u8; N], DecodeError> {
    bytes
        .try_into()
        .map_err(|_| bad_value(column, format!("expected {N} bytes, got {}", bytes.len())))
}

/// An integer column of any width, `None` when the family is not an integer.
fn integer(column: &'static str, fam: Family, bytes: &[u8]) -> Result<Option<i64>, DecodeError> {
    Ok(Some(match fam {
        Family::Int2 => i64::from(i16::from_be_bytes(fixed(column, bytes)?)),
        Family::Int4 => i64::from(i32::from_be_bytes(fixed(column, bytes)?)),
        Family::Int8 => i64::from_be_bytes(fixed(column, bytes)?),
        _ => return Ok(None),
    }))
}

/// A text column: any string type, enums, citext; integers, oids and uuids as their usual text.
pub fn text<'r>(row: &'r PgRow, column: &'static str) -> Result<Option<Cow<'r, str>>, DecodeError> {
    let Some((bytes, fam)) = raw(row, column)? else {
        return Ok(None);
    };
    if let Some(n) = integer(column, fam, bytes)? {
        return Ok(Some(Cow::Owned(n.to_string())));
    }
    let text = match fam {
        Family::Text => Cow::Borrowed(
            std::str::from_utf8(bytes)
                .map_err(|e| bad_value(column, format!("not valid UTF-8: {e}")))?,
        ),
        Family::Oid => Cow::Owned(u32::from_be_bytes(fixed(column, bytes)?).to_string()),
        Family::Uuid => Cow::Owned(uuid_text(&fixed::<16>(column, bytes)?)),
        Family::Numeric => Cow::Owned(numeric_text(bytes).map_err(|e| bad_value(column, e))?),
        _ => return Err(wrong_type(row, column, "text", "text")),
    };
    Ok(Some(text))
}

/// A number column: float8, float4, numeric (Prisma `Decimal`), int2/4/8. Numeric `NaN` and
/// `±Infinity` come through as the same `f64` values, for the formula's checks to reject.
pub fn number(row: &PgRow, column: &'static str) -> Result<Option<f64>, DecodeError> {
    let Some((bytes, fam)) = raw(row, column)? else {
        return Ok(None);
    };
    if let Some(n) = integer(column, fam, bytes)? {
        // Exact up to 2^53; amounts and liquidity beyond that lose only unit precision.
        return Ok(Some(n as f64));
    }
    let n = match fam {
        Family::Float8 => f64::from_be_bytes(fixed(column, bytes)?),
        Family::Float4 => f64::from(f32::from_be_bytes(fixed(column, bytes)?)),
        Family::Numeric => numeric_f64(bytes).map_err(|e| bad_value(column, e))?,
        _ => return Err(wrong_type(row, column, "a number", "float8")),
    };
    Ok(Some(n))
}

/// A boolean column: bool, or an integer (0 is false).
pub fn boolean(row: &PgRow, column: &'static str) -> Result<Option<bool>, DecodeError> {
    let Some((bytes, fam)) = raw(row, column)? else {
        return Ok(None);
    };
    if let Some(n) = integer(column, fam, bytes)? {
        return Ok(Some(n != 0));
    }
    match fam {
        Family::Bool => Ok(Some(fixed::<1>(column, bytes)?[0] != 0)),
        _ => Err(wrong_type(row, column, "a boolean", "bool")),
    }
}

/// A time column: `timestamptz`, `timestamp` (read as UTC, which is what Prisma stores) or
/// `date` (midnight UTC).
pub fn timestamp(row: &PgRow, column: &'static str) -> Result<Option<Timestamp>, DecodeError> {
    let Some((bytes, fam)) = raw(row, column)? else {
        return Ok(None);
    };
    let micros = match fam {
        Family::Timestamp => i64::from_be_bytes(fixed(column, bytes)?),
        Family::Date => {
            i64::from(i32::from_be_bytes(fixed(column, bytes)?)).saturating_mul(86_400_000_000)
        }
        _ => return Err(wrong_type(row, column, "a timestamp", "timestamptz")),
    };
    Ok(Some(from_pg_micros(micros)))
}

/// PostgreSQL's epoch (2000-01-01T00:00:00Z) in Unix seconds.
const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

/// Microseconds since PostgreSQL's epoch to a timestamp RFC 3339 can write. `i64::MAX` and
/// `i64::MIN` are `infinity` and `-infinity`.
pub fn from_pg_micros(micros: i64) -> Timestamp {
    let at = DateTime::from_timestamp(PG_EPOCH_UNIX_SECONDS, 0)
        .and_then(|epoch| epoch.checked_add_signed(TimeDelta::microseconds(micros)));
    match at {
        Some(at) if (0..=9999).contains(&at.year()) => Timestamp::At(at),
        _ => Timestamp::OutOfRange,
    }
}

fn uuid_text(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// A binary `numeric` as decimal text in scientific form (`-1234.5` → `-12345e-1`), or `NaN`,
/// `inf`, `-inf`.
fn numeric_text(bytes: &[u8]) -> Result<String, String> {
    let word = |i: usize| -> Result<u16, String> {
        bytes
            .get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".to_string())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    match sign {
        NUMERIC_NAN => return Ok("NaN".into()),
        NUMERIC_PINF => return Ok("inf".into()),
        NUMERIC_NINF => return Ok("-inf".into()),
        NUMERIC_POS | NUMERIC_NEG => {}
        other => return Err(format!("numeric with unknown sign word {other:#x}")),
    }
    if ndigits == 0 {
        return Ok("0".into());
    }
    let mut digits = String::with_capacity(ndigits * 4 + 8);
    if sign == NUMERIC_NEG {
        digits.push('-');
    }
    for i in 0..ndigits {
        let d = word(4 + i)?;
        if d > 9999 {
            return Err(format!("numeric digit {d} out of range"));
        }
        digits.push_str(&format!("{d:04}"));
    }
    // The value is digits × 10000^(weight − ndigits + 1).
    let exponent = (weight - ndigits as i64 + 1) * 4;
    Ok(format!("{digits}e{exponent}"))
}

/// A binary `numeric` as the nearest `f64` (parsed from its exact decimal text).
fn numeric_f64(bytes: &[u8]) -> Result<f64, String> {
    let text = numeric_text(bytes)?;
    text.parse::<f64>()
        .map_err(|e| format!("numeric {text}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [ndigits, weight as u16, sign, 0] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_decode_exactly() {
        // 1234.5678 = [1234, 5678], weight 0.
        assert_eq!(
            numeric_f64(&numeric(2, 0, NUMERIC_POS, &[1234, 5678])),
            Ok(1234.5678)
        );
        // 0.55 = [5500], weight -1.
        assert_eq!(numeric_f64(&numeric(1, -1, NUMERIC_POS, &[5500])), Ok(0.55));
        // -20000 = [2], weight 1.
        assert_eq!(numeric_f64(&numeric(1, 1, NUMERIC_NEG, &[2])), Ok(-20000.0));
        assert_eq!(numeric_f64(&numeric(0, 0, NUMERIC_POS, &[])), Ok(0.0));
        assert!(
            numeric_f64(&numeric(0, 0, NUMERIC_NAN, &[]))
                .unwrap()
                .is_nan()
        );
        assert_eq!(
            numeric_f64(&numeric(0, 0, NUMERIC_PINF, &[])),
            Ok(f64::INFINITY)
        );
        assert!(
            numeric_f64(&numeric(2, 0, NUMERIC_POS, &[1])).is_err(),
            "truncated"
        );
        assert!(numeric_f64(&numeric(1, 0, NUMERIC_POS, &[10000])).is_err());
        assert!(numeric_f64(&[0, 1]).is_err());
    }

    #[test]
    fn timestamps_out_of_rfc3339_range_are_flagged() {
        assert_eq!(from_pg_micros(i64::MAX), Timestamp::OutOfRange);
        assert_eq!(from_pg_micros(i64::MIN), Timestamp::OutOfRange);
        assert_eq!(
            from_pg_micros(0),
            Timestamp::At("2000-01-01T00:00:00Z".parse().unwrap())
        );
        // Past year 9999 and before year 0.
        let year = 365_i64 * 86_400 * 1_000_000;
        assert_eq!(from_pg_micros(8_010 * year), Timestamp::OutOfRange);
        assert_eq!(from_pg_micros(-2_010 * year), Timestamp::OutOfRange);
    }

    #[test]
    fn uuids_print_hyphenated() {
        let b: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(uuid_text(&b), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }
}
