//! `strftime_now(fmt)` and the dates llama-server puts in a template's context, formatted from
//! the render's own clock in UTC. The codes are C's (and Python's, which calls C's), in the C
//! locale: `%a %A %b %B %d %e %H %I %j %m %M %p %S %y %Y %Z %z %F %T %D %%`; any other code is
//! written as it stands.

use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A moment broken down in UTC.
struct Civil {
    year: i64,
    month: usize, // 1..=12
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    weekday: usize, // 0 = Sunday
    yday: u32,      // 1..=366
}

fn civil(t: SystemTime) -> Civil {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX) - 1,
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as usize;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const BEFORE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = BEFORE[month - 1] + day + u32::from(leap && month > 2);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem / 60 % 60) as u32,
        second: (rem % 60) as u32,
        weekday: (days + 4).rem_euclid(7) as usize, // 1970-01-01 was a Thursday
        yday,
    }
}

/// `fmt` formatted at `t`, in UTC.
pub(super) fn strftime(fmt: &str, t: SystemTime) -> String {
    let c = civil(t);
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        let Some(code) = chars.next() else {
            out.push('%');
            break;
        };
        let hour12 = if c.hour.is_multiple_of(12) { 12 } else { c.hour % 12 };
        match code {
            'a' => out.push_str(&DAYS[c.weekday][..3]),
            'A' => out.push_str(DAYS[c.weekday]),
            'b' | 'h' => out.push_str(&MONTHS[c.month - 1][..3]),
            'B' => out.push_str(MONTHS[c.month - 1]),
            'd' => out.push_str(&format!("{:02}", c.day)),
            'e' => out.push_str(&format!("{:2}", c.day)),
            'H' => out.push_str(&format!("{:02}", c.hour)),
            'I' => out.push_str(&format!("{hour12:02}")),
            'j' => out.push_str(&format!("{:03}", c.yday)),
            'm' => out.push_str(&format!("{:02}", c.month)),
            'M' => out.push_str(&format!("{:02}", c.minute)),
            'p' => out.push_str(if c.hour < 12 { "AM" } else { "PM" }),
            'S' => out.push_str(&format!("{:02}", c.second)),
            'y' => out.push_str(&format!("{:02}", c.year.rem_euclid(100))),
            'Y' => out.push_str(&c.year.to_string()),
            'Z' => out.push_str("UTC"),
            'z' => out.push_str("+0000"),
            'F' => out.push_str(&format!("{}-{:02}-{:02}", c.year, c.month, c.day)),
            'T' => out.push_str(&format!("{:02}:{:02}:{:02}", c.hour, c.minute, c.second)),
            'D' => out.push_str(&format!("{:02}/{:02}/{:02}", c.month, c.day, c.year.rem_euclid(100))),
            '%' => out.push('%'),
            other => {
                out.push('%');
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_llama_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208 of a leap year.
        let t = UNIX_EPOCH + Duration::from_secs(1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9);
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(strftime("%Y-%m-%d", t), "2024-07-26");
        assert_eq!(strftime("%b %d %Y", t), "Jul 26 2024");
        assert_eq!(strftime("%A %B %e, %I:%M:%S %p (%j) %% %q", t), "Friday July 26, 01:05:09 PM (208) % %q");
        assert_eq!(strftime("%F %T %Z", UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(strftime("%a %D", UNIX_EPOCH + Duration::from_secs(951_782_400)), "Tue 02/29/00");
    }
}
