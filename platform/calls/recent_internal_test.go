package calls

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// recordStream is a bucket's stream whose records are made up from their
// subjects, $KV.shoal_calls.FUNCTION-N: a record of FUNCTION, but none
// for "gone", a deletion marker for "deleted" and no JSON for "garbage".
// Each read takes a while, so that those readRecords starts at once
// overlap, and it counts how many, and how many bytes, were read at once.
type recordStream struct {
	jetstream.Stream // nil: readRecords reads by sequence and last messages only
	sizes            map[string]int
	// subjects are the subjects by sequence.
	subjects map[uint64]string

	mu                         sync.Mutex
	reads, n, bytes            int
	maxN, maxBytes, totalBytes int
}

// GetMsg reads the message at seq as the last of its subject: the scan
// saw the newest revision, except of "gone" calls, whose message at seq
// is gone (and then their last one too).
func (s *recordStream) GetMsg(ctx context.Context, seq uint64, _ ...jetstream.GetMsgOpt) (*jetstream.RawStreamMsg, error) {
	subject := s.subjects[seq]
	if strings.HasPrefix(subject, bucketSubject+"gone-") {
		return nil, jetstream.ErrMsgNotFound
	}
	return s.GetLastMsgForSubject(ctx, subject)
}

func (s *recordStream) GetLastMsgForSubject(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error) {
	size := s.sizes[subject]
	s.mu.Lock()
	s.reads++
	s.n++
	s.bytes += size
	s.totalBytes += size
	s.maxN, s.maxBytes = max(s.maxN, s.n), max(s.maxBytes, s.bytes)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.n--
		s.bytes -= size
		s.mu.Unlock()
	}()
	select {
	case <-time.After(20 * time.Millisecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	id := strings.TrimPrefix(subject, bucketSubject)
	function, _, _ := strings.Cut(id, "-")
	m := &jetstream.RawStreamMsg{Subject: subject, Header: nats.Header{}}
	switch function {
	case "gone":
		return nil, jetstream.ErrMsgNotFound
	case "deleted":
		m.Header.Set(kvOperation, kvDelete)
	case "garbage":
		m.Data = []byte("{not json")
	default:
		m.Data, _ = json.Marshal(Record{ID: id, Function: function})
	}
	return m, nil
}

// scanned is the place of call id, FUNCTION-N, in the scan: N.
func scanned(id string) int {
	_, n, _ := strings.Cut(id, "-")
	i, _ := strconv.Atoi(n)
	return i
}

// TestReadRecords: the whole records are read newest first, no more than
// still wanted, at most recentParallel and recentInFlight bytes at once
// (one always), up to the budget; those gone or deleted since the scan
// are left out, those that do not decode skipped.
func TestReadRecords(t *testing.T) {
	const MiB = 1 << 20
	// calls are n calls of function, each size bytes.
	type calls struct {
		function string
		n, size  int
	}
	tests := []struct {
		name     string
		calls    []calls
		limit    int
		function string
		budget   int
		// want
		records, reads, maxN, skipped int
		truncated                     bool
	}{
		{name: "small records, recentParallel at once", calls: []calls{{"f", 100, 1 << 10}}, limit: 100, budget: recentBudget,
			records: 100, reads: 100, maxN: recentParallel},
		{name: "no more read than records wanted", calls: []calls{{"f", 100, 1 << 10}}, limit: 5, budget: recentBudget,
			records: 5, reads: 5, maxN: 5},
		{name: "large records, recentInFlight bytes at once, up to the budget", calls: []calls{{"f", 20, 5 * MiB}}, limit: 20, budget: recentBudget,
			records: 12, reads: 12, maxN: 3, truncated: true},
		{name: "a record over recentInFlight, alone", calls: []calls{{"f", 3, 20 * MiB}}, limit: 3, budget: recentBudget,
			records: 3, reads: 3, maxN: 1},
		{name: "a first record over the budget, alone", calls: []calls{{"f", 2, 100 * MiB}}, limit: 2, budget: recentBudget,
			records: 1, reads: 1, maxN: 1, truncated: true},
		{name: "a budget that fits the records wanted: not truncated", calls: []calls{{"f", 4, 5 * MiB}}, limit: 2, budget: 10 * MiB,
			records: 2, reads: 2, maxN: 2},
		{name: "one function's, reading the others'", calls: []calls{{"g", 10, 1 << 10}, {"f", 3, 1 << 10}, {"g", 10, 1 << 10}}, limit: 3, function: "f", budget: recentBudget,
			records: 3, maxN: 3},
		{name: "one function's, up to the budget", calls: []calls{{"g", 10, MiB}, {"f", 3, MiB}}, limit: 3, function: "f", budget: 8 * MiB,
			records: 0, reads: 8, maxN: 3, truncated: true},
		// The gone ones' newest revisions are read one at a time.
		{name: "gone and deleted since the scan: left out", calls: []calls{{"gone", 2, 10}, {"f", 1, 10}, {"deleted", 2, 10}, {"f", 1, 10}}, limit: 10, budget: recentBudget,
			records: 2, reads: 6, maxN: 5},
		{name: "undecodable: skipped", calls: []calls{{"garbage", 2, 10}, {"f", 3, 10}}, limit: 10, budget: recentBudget,
			records: 3, reads: 5, maxN: 5, skipped: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &recordStream{sizes: map[string]int{}, subjects: map[uint64]string{}}
			var newest []stored
			for _, c := range tt.calls {
				for range c.n {
					subject := fmt.Sprintf("%s%s-%d", bucketSubject, c.function, len(newest))
					s.sizes[subject] = c.size
					seq := uint64(len(newest) + 1)
					s.subjects[seq] = subject
					newest = append(newest, stored{Subject: subject, Seq: seq, Size: c.size})
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			l, err := readRecords(ctx, s, newest, tt.limit, tt.function, tt.budget)
			if err != nil {
				t.Fatal(err)
			}
			if len(l.Records) != tt.records || l.Truncated != tt.truncated || l.Skipped != tt.skipped {
				t.Errorf("%d records, truncated %v, %d skipped; want %d, %v, %d", len(l.Records), l.Truncated, l.Skipped, tt.records, tt.truncated, tt.skipped)
			}
			for i, r := range l.Records {
				if tt.function != "" && r.Function != tt.function {
					t.Errorf("record %d is of %s, want %s", i, r.Function, tt.function)
				}
				if i > 0 && scanned(r.ID) < scanned(l.Records[i-1].ID) {
					t.Errorf("record %d (%s) after %s: want the order of the scan", i, r.ID, l.Records[i-1].ID)
				}
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if tt.reads != 0 && s.reads != tt.reads {
				t.Errorf("%d records read, want %d", s.reads, tt.reads)
			}
			if s.maxN != tt.maxN {
				t.Errorf("%d records read at once, want %d", s.maxN, tt.maxN)
			}
			if s.maxN > 1 && s.maxBytes > recentInFlight {
				t.Errorf("%d bytes read at once, want at most %d", s.maxBytes, recentInFlight)
			}
			if s.reads > 1 && s.totalBytes > tt.budget {
				t.Errorf("%d bytes read in all, want at most %d", s.totalBytes, tt.budget)
			}
		})
	}
}
