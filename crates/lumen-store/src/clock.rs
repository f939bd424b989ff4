//! Wall-clock helpers: Unix time, bucket alignment and budget periods (UTC calendar).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    unix_ms() / 1000
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A rollup width (OpenAI's `bucket_width`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Width {
    /// One minute.
    #[serde(rename = "1m")]
    Minute,
    /// One hour.
    #[serde(rename = "1h")]
    Hour,
    /// One day (UTC).
    #[serde(rename = "1d")]
    Day,
}

impl Width {
    /// Every width, as rollups keep them.
    pub const ALL: [Width; 3] = [Width::Minute, Width::Hour, Width::Day];

    /// The width in seconds.
    pub fn secs(self) -> u64 {
        match self {
            Width::Minute => 60,
            Width::Hour => 3600,
            Width::Day => 86_400,
        }
    }

    /// `1m`, `1h` or `1d`.
    pub fn as_str(self) -> &'static str {
        match self {
            Width::Minute => "1m",
            Width::Hour => "1h",
            Width::Day => "1d",
        }
    }

    /// Parses `1m`, `1h` or `1d`.
    pub fn parse(s: &str) -> Option<Width> {
        match s {
            "1m" => Some(Width::Minute),
            "1h" => Some(Width::Hour),
            "1d" => Some(Width::Day),
            _ => None,
        }
    }

    /// The start of the bucket holding `t` (Unix seconds).
    pub fn floor(self, t: u64) -> u64 {
        t - t % self.secs()
    }
}

/// The period a token budget covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
}

impl Period {
    /// `day` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// Parses `day` or `month`.
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "day" => Some(Period::Day),
            "month" => Some(Period::Month),
            _ => None,
        }
    }

    /// `[start, end)` of the period holding `t` (Unix seconds).
    pub fn bounds(self, t: u64) -> (u64, u64) {
        let day = t / 86_400;
        match self {
            Period::Day => (day * 86_400, (day + 1) * 86_400),
            Period::Month => {
                let (y, m, _) = civil_from_days(day as i64);
                let start = days_from_civil(y, m, 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let end = days_from_civil(ny, nm, 1);
                (start as u64 * 86_400, end as u64 * 86_400)
            }
        }
    }
}

/// Howard Hinnant's `civil_from_days`: (year, month 1-12, day 1-31) of a day count.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Howard Hinnant's `days_from_civil`: the day count of a date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_days() {
        // 2024-02-29 12:00 UTC (leap day).
        let t = 1_709_208_000;
        assert_eq!(Period::Day.bounds(t), (1_709_164_800, 1_709_251_200));
        // February 2024 runs from 2024-02-01 to 2024-03-01.
        assert_eq!(Period::Month.bounds(t), (1_706_745_600, 1_709_251_200));
        // December rolls into the next year.
        let dec = 1_703_980_800; // 2023-12-31
        assert_eq!(Period::Month.bounds(dec), (1_701_388_800, 1_704_067_200));
        for d in [0, 1, 59, 60, 365, 10_000, 20_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn widths() {
        assert_eq!(Width::Hour.floor(7_261), 7_200);
        assert_eq!(Width::parse("1d"), Some(Width::Day));
        assert_eq!(Width::parse("2d"), None);
    }
}
