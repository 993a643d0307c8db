//! "Did you mean …?" for misspelled table, column, object and key names.

/// `; did you mean "x"?` for the candidate closest to `wrong`, or an empty string when
/// nothing is close enough to be a plausible typo.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(wrong, candidates)
        .map(|c| format!("; did you mean {c:?}?"))
        .unwrap_or_default()
}

/// The candidate closest to `wrong` by Jaro-Winkler similarity, if any is close (≥ 0.8).
pub fn closest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Jaro-Winkler favours shared prefixes, which is how typos usually look; 0.8 accepts
    // "invoce"/"invoice" and "slto"/"slot" but not unrelated words.
    let wrong_lower = wrong.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&wrong_lower, &c.to_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_plausible_name_only() {
        let names = ["account_invoice", "account_move", "res_partner"];
        assert_eq!(closest("acount_invoice", names), Some("account_invoice"));
        assert_eq!(closest("ACCOUNT_MOVE", names), Some("account_move"));
        assert_eq!(closest("zzz", names), None);
        assert_eq!(
            did_you_mean("res_partnr", names),
            "; did you mean \"res_partner\"?"
        );
    }
}
