//! "Did you mean …?" for misspelt keys and names.

/// The candidate most similar to `word`, if any is similar enough to be a likely typo.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    // Jaro–Winkler favours shared prefixes, which is how config typos usually look;
    // 0.8 accepts "invoce"/"invoice" and "slto"/"slot" but not unrelated words.
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(word, candidate), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn suggests_near_misses_only() {
        let names = ["invoice", "partner", "stock_move"];
        assert_eq!(closest("invoce", names), Some("invoice"));
        assert_eq!(closest("partners", names), Some("partner"));
        assert_eq!(closest("banana", names), None);
        assert_eq!(closest("slto", ["slot", "publication"]), Some("slot"));
        assert_eq!(closest("x", []), None);
    }
}
