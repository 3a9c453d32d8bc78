package calls

// SetRecentBudget makes q.Recent read at most n bytes of records, in
// place of its 64 MiB.
func SetRecentBudget(q *Queue, n int) { q.recentBudget = n }
