//! The ledger: the last word on each user and parameter changed through
//! Rampart, and the commands that bring a node to it.

use std::collections::BTreeMap;

use bytes::Bytes;

/// The last word on each user and parameter changed through Rampart.
#[derive(Default)]
pub(super) struct Ledger {
    /// A user's rules as `ACL LIST` writes them, or `None`: deleted.
    pub(super) users: BTreeMap<Bytes, Option<Vec<Bytes>>>,
    /// A parameter's value, by its name in lower case.
    pub(super) params: BTreeMap<Bytes, Bytes>,
    /// Counts the changes recorded, to tell when it is to be kept again.
    pub(super) changes: u64,
}

impl Ledger {
    pub(super) fn is_empty(&self) -> bool {
        self.users.is_empty() && self.params.is_empty()
    }

    /// The commands that bring a node to the ledger's word.
    pub(super) fn commands(&self) -> Vec<Vec<Bytes>> {
        let mut commands = Vec::with_capacity(self.users.len() + self.params.len());
        for (user, rules) in &self.users {
            commands.push(user_command(user, rules.as_deref()));
        }
        for (param, value) in &self.params {
            commands.push(vec![
                Bytes::from_static(b"CONFIG"),
                Bytes::from_static(b"SET"),
                param.clone(),
                value.clone(),
            ]);
        }
        commands
    }
}
/// The command that makes a node's `user` what `rules` say (`None`:
/// deleted).
pub(super) fn user_command(user: &Bytes, rules: Option<&[Bytes]>) -> Vec<Bytes> {
    let word = Bytes::from_static;
    let mut args = match rules {
        None => vec![word(b"ACL"), word(b"DELUSER"), user.clone()],
        Some(_) => vec![word(b"ACL"), word(b"SETUSER"), user.clone(), word(b"reset")],
    };
    args.extend(rules.into_iter().flatten().cloned());
    args
}
/// The users an `ACL SETUSER <user> ...` or `ACL DELUSER <user>...` names.
pub(super) fn named_users(change: &[Bytes]) -> Vec<Bytes> {
    match change.get(1).map(|a| a.to_ascii_uppercase()) {
        Some(sub) if sub == b"SETUSER" => change.get(2).into_iter().cloned().collect(),
        _ => change.iter().skip(2).cloned().collect(),
    }
}

/// A user's rules in an `ACL LIST` line (`user <name> <rules>`), a
/// selector in parentheses kept as one rule as `ACL SETUSER` takes it.
pub(super) fn rules_of(line: &str, user: &[u8]) -> Option<Vec<Bytes>> {
    let mut words = line.split(' ').filter(|w| !w.is_empty());
    if words.next() != Some("user") || words.next()?.as_bytes() != user {
        return None;
    }
    let mut rules = Vec::new();
    let mut selector: Option<String> = None;
    for word in words {
        match selector.as_mut() {
            Some(open) => {
                open.push(' ');
                open.push_str(word);
            }
            None if word.starts_with('(') => selector = Some(word.to_string()),
            None => rules.push(Bytes::copy_from_slice(word.as_bytes())),
        }
        if selector.as_ref().is_some_and(|s| s.ends_with(')')) {
            rules.extend(selector.take().map(Bytes::from));
        }
    }
    Some(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_come_from_the_users_line_selectors_whole() {
        let line = "user bob on #abc ~x* resetchannels -@all +set (+get ~y*) (~z* %R~w +hget)";
        let rules = rules_of(line, b"bob").unwrap();
        let rules: Vec<&[u8]> = rules.iter().map(|r| &r[..]).collect();
        assert_eq!(
            rules,
            [
                b"on".as_ref(),
                b"#abc",
                b"~x*",
                b"resetchannels",
                b"-@all",
                b"+set",
                b"(+get ~y*)",
                b"(~z* %R~w +hget)",
            ]
        );
        assert!(rules_of(line, b"bo").is_none());
        assert!(rules_of("user alice on nopass", b"bob").is_none());
    }

    #[test]
    fn the_ledger_deletes_sets_and_configures() {
        let mut ledger = Ledger::default();
        ledger.users.insert(Bytes::from("gone"), None);
        ledger.users.insert(
            Bytes::from("app"),
            Some(vec![Bytes::from("on"), Bytes::from("~app:*")]),
        );
        ledger
            .params
            .insert(Bytes::from("maxmemory-policy"), Bytes::from("allkeys-lru"));
        let commands: Vec<String> = ledger
            .commands()
            .iter()
            .map(|c| String::from_utf8_lossy(&c.join(&b" "[..])).into_owned())
            .collect();
        assert_eq!(
            commands,
            [
                "ACL SETUSER app reset on ~app:*",
                "ACL DELUSER gone",
                "CONFIG SET maxmemory-policy allkeys-lru",
            ]
        );
    }
}
