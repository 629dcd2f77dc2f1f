//! HAProxy's `show stat` CSV: the header line names the columns (`# pxname,svname,…`), so
//! columns are found by name rather than by position.

/// One server row: what the tracker needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    pub backend: String,
    pub server: String,
    /// `UP`, `DOWN`, `UP 2/3`, `DOWN 1/2`, `MAINT`, `no check`, …
    pub status: String,
    /// `L4OK`, `L7OK`, `L7STS`, `L4TOUT`, `L4CON`, `INI`; a leading `* ` (check in flight) removed.
    pub check_status: String,
    /// The HTTP status of the last check, when there was one.
    pub check_code: String,
    /// Seconds since the status last changed.
    pub last_change_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatError {
    #[error("show stat: no `# pxname,…` header line (got {0:?})")]
    NoHeader(String),
    #[error("show stat: the header has no {0:?} column")]
    MissingColumn(&'static str),
}

/// Parses the output of `show stat`; rows of proxies (`FRONTEND`, `BACKEND`) are left out.
pub fn parse(text: &str) -> Result<Vec<ServerStat>, StatError> {
    let mut lines = text.lines();
    let header = lines
        .by_ref()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| l.strip_prefix("# "))
        .ok_or_else(|| StatError::NoHeader(text.chars().take(80).collect()))?;
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &'static str| cols.iter().position(|c| *c == name).ok_or(StatError::MissingColumn(name));
    let (px, sv, st, cs, cc, lc) =
        (col("pxname")?, col("svname")?, col("status")?, col("check_status")?, col("check_code")?, col("lastchg")?);
    let mut out = Vec::new();
    for line in lines {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        let server = get(sv);
        if server == "FRONTEND" || server == "BACKEND" {
            continue;
        }
        out.push(ServerStat {
            backend: get(px).to_string(),
            server: server.to_string(),
            status: get(st).to_string(),
            check_status: get(cs).trim_start_matches("* ").to_string(),
            check_code: get(cc).to_string(),
            last_change_s: get(lc).parse().ok(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_by_column_name() {
        // Trimmed from HAProxy 2.6.12's real output (columns reordered to prove lookup by name).
        let text = "# pxname,svname,qcur,status,lastchg,check_status,check_code\n\
                    c_a_1,c_a_1,0,UP,12,L7OK,200\n\
                    c_a_1,BACKEND,0,UP,12,,\n\
                    c_b_1,c_b_1,0,DOWN 1/2,3,* L7STS,503\n\n";
        let rows = parse(text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].status, "UP");
        assert_eq!(
            (rows[1].status.as_str(), rows[1].check_status.as_str(), rows[1].check_code.as_str()),
            ("DOWN 1/2", "L7STS", "503")
        );
        assert_eq!(rows[1].last_change_s, Some(3));
        assert!(matches!(parse("Unknown command"), Err(StatError::NoHeader(_))));
        assert_eq!(parse("# pxname,svname\n"), Err(StatError::MissingColumn("status")));
    }
}
