//! `INFO` over several shards: the sections that count things over the
//! data set or the commands run (`Stats`, `Keyspace`, `Errorstats`,
//! `Commandstats`) are summed over every shard's primary; the rest is the
//! first shard's, as its node reports it.

/// The sections summed over the shards.
pub const SUMMED: [&str; 4] = ["Stats", "Keyspace", "Errorstats", "Commandstats"];

/// `info` (one node's `INFO` text) with each of [`SUMMED`] it holds
/// replaced by the sum of that section over `shards` (each shard's
/// `INFO stats keyspace errorstats commandstats`).
pub fn with_sums(info: &str, shards: &[String]) -> String {
    let mut out = info.to_string();
    for section in SUMMED {
        let header = format!("# {section}");
        let Some(start) = out.find(&header) else {
            continue;
        };
        let end = out[start..]
            .find("\r\n\r\n")
            .map_or(out.len(), |at| start + at + 2);
        let merged = sum(section, shards);
        out.replace_range(start..end, &merged);
    }
    with_summed_fields(&out, shards)
}

/// The `# Clients` fields that count what waits on a node: summed over
/// the shards, so that a client waiting for another blocked client (as
/// Redis's own tests do) sees it whatever shard it blocks on. The rest of
/// the section is the first shard's (`connected_clients` is Rampart's).
pub const SUMMED_FIELDS: [&str; 2] = ["blocked_clients", "clients_in_timeout_table"];

fn with_summed_fields(info: &str, shards: &[String]) -> String {
    info.split_inclusive('\n')
        .map(|line| {
            let summed = SUMMED_FIELDS.iter().find(|f| {
                line.strip_prefix(**f)
                    .is_some_and(|rest| rest.starts_with(':'))
            });
            let Some(name) = summed else {
                return line.to_string();
            };
            let total: i64 = shards
                .iter()
                .flat_map(|info| lines_of(info, "Clients"))
                .filter_map(|l| {
                    l.strip_prefix(*name)?
                        .strip_prefix(':')?
                        .parse::<i64>()
                        .ok()
                })
                .sum();
            format!("{name}:{total}\r\n")
        })
        .collect()
}

/// A `name:value` line's value: added when a number, kept when text.
enum Plain {
    Number(f64),
    Text(String),
}

/// One section summed: lines `name:field=value,...` with the same name
/// are added field by field, in the order the names first appear.
/// `usec_per_call` is recomputed from the sums, and `avg_ttl` is the
/// average weighted by `expires`. Lines `name:number` (`# Stats`) are
/// added; other `name:text` lines are the first shard's.
fn sum(section: &str, shards: &[String]) -> String {
    let mut lines: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    let mut plain: Vec<(String, Plain)> = Vec::new();
    for info in shards {
        for line in lines_of(info, section) {
            let Some((name, fields)) = line.split_once(':') else {
                continue;
            };
            if !fields.contains('=') {
                let value = match fields.parse::<f64>() {
                    Ok(n) => Plain::Number(n),
                    Err(_) => Plain::Text(fields.to_string()),
                };
                match plain.iter_mut().find(|(n, _)| n == name) {
                    Some((_, Plain::Number(total))) => {
                        if let Plain::Number(n) = value {
                            *total += n;
                        }
                    }
                    Some(_) => {}
                    None => plain.push((name.to_string(), value)),
                }
                continue;
            }
            let index = match lines.iter().position(|(n, _)| n == name) {
                Some(index) => index,
                None => {
                    lines.push((name.to_string(), Vec::new()));
                    lines.len() - 1
                }
            };
            let expires = field(fields, "expires").unwrap_or(0.0);
            for (key, value) in fields.split(',').filter_map(|f| f.split_once('=')) {
                let Ok(value) = value.parse::<f64>() else {
                    continue;
                };
                // Weighted, so that dividing by the summed expires below
                // gives the average over every shard's keys.
                let value = if key == "avg_ttl" {
                    value * expires
                } else {
                    value
                };
                let sums = &mut lines[index].1;
                match sums.iter_mut().find(|(k, _)| k == key) {
                    Some((_, total)) => *total += value,
                    None => sums.push((key.to_string(), value)),
                }
            }
        }
    }
    let mut out = format!("# {section}\r\n");
    for (name, value) in plain {
        let value = match value {
            Plain::Number(n) if n.fract() == 0.0 => format!("{}", n as i64),
            Plain::Number(n) => format!("{n:.2}"),
            Plain::Text(text) => text,
        };
        out.push_str(&format!("{name}:{value}\r\n"));
    }
    for (name, mut fields) in lines {
        let get = |fields: &[(String, f64)], key: &str| {
            fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
        };
        let (calls, usec, expires) = (
            get(&fields, "calls"),
            get(&fields, "usec"),
            get(&fields, "expires"),
        );
        for (key, value) in fields.iter_mut() {
            match key.as_str() {
                "usec_per_call" => *value = usec.unwrap_or(0.0) / calls.unwrap_or(0.0).max(1.0),
                "avg_ttl" => *value = (*value / expires.unwrap_or(0.0).max(1.0)).floor(),
                _ => {}
            }
        }
        let text: Vec<String> = fields
            .iter()
            .map(|(key, value)| match key.as_str() {
                "usec_per_call" => format!("{key}={value:.2}"),
                _ => format!("{key}={}", *value as i64),
            })
            .collect();
        out.push_str(&format!("{name}:{}\r\n", text.join(",")));
    }
    out
}

/// The lines of `section` in an `INFO` text.
fn lines_of<'a>(info: &'a str, section: &str) -> impl Iterator<Item = &'a str> {
    let header = format!("# {section}");
    let body = info.find(&header).map(|at| &info[at + header.len()..]);
    body.into_iter().flat_map(|body| {
        body.lines()
            .map(str::trim)
            .skip_while(|l| l.is_empty())
            .take_while(|l| !l.is_empty() && !l.starts_with('#'))
    })
}

fn field(fields: &str, name: &str) -> Option<f64> {
    fields
        .split(',')
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_sections_are_summed() {
        let info = "# Server\r\nredis_version:7.0.15\r\n\r\n# Errorstats\r\nerrorstat_ERR:count=1\r\n\r\n# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n";
        let shards = [
            "# Commandstats\r\ncmdstat_set:calls=2,usec=10,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\r\n# Errorstats\r\nerrorstat_ERR:count=1\r\n\r\n# Keyspace\r\ndb0:keys=1,expires=1,avg_ttl=100\r\n".to_string(),
            "# Commandstats\r\ncmdstat_set:calls=2,usec=30,usec_per_call=15.00,rejected_calls=1,failed_calls=0\r\n\r\n# Errorstats\r\nerrorstat_ERR:count=2\r\nerrorstat_OOM:count=1\r\n\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=300\r\n".to_string(),
        ];
        let merged = with_sums(info, &shards);
        assert_eq!(
            merged,
            "# Server\r\nredis_version:7.0.15\r\n\r\n# Errorstats\r\nerrorstat_ERR:count=3\r\nerrorstat_OOM:count=1\r\n\r\n# Keyspace\r\ndb0:keys=4,expires=2,avg_ttl=200\r\n"
        );
        let stats = sum(
            "Stats",
            &[
                "# Stats\r\ntotal_error_replies:1\r\nmode:x\r\n".into(),
                "# Stats\r\ntotal_error_replies:2\r\nmode:y\r\n".into(),
            ],
        );
        assert_eq!(stats, "# Stats\r\ntotal_error_replies:3\r\nmode:x\r\n");
        let clients = with_sums(
            "# Clients\r\nconnected_clients:9\r\nblocked_clients:0\r\nmaxclients:10000\r\n",
            &[
                "# Clients\r\nblocked_clients:1\r\nmaxclients:10000\r\n".into(),
                "# Clients\r\nblocked_clients:2\r\nmaxclients:10000\r\n".into(),
            ],
        );
        assert_eq!(
            clients,
            "# Clients\r\nconnected_clients:9\r\nblocked_clients:3\r\nmaxclients:10000\r\n"
        );
        let stats = sum("Commandstats", &shards);
        assert_eq!(
            stats,
            "# Commandstats\r\ncmdstat_set:calls=4,usec=40,usec_per_call=10.00,rejected_calls=1,failed_calls=0\r\n"
        );
    }
}
