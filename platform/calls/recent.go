package calls

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// MaxRecent is the most entries Queue.Recent and RecentDeadLetters return
// at once.
const MaxRecent = 500

// ErrBadLimit means a listing was asked for fewer than 1 or more than
// MaxRecent entries: the caller's mistake (an HTTP 400), not Shoal's.
var ErrBadLimit = errors.New("the limit must be from 1 to " + strconv.Itoa(MaxRecent))

// The bucket's stream, as JetStream's key-value store names it.
const (
	bucketStream  = "KV_" + Bucket
	bucketSubject = "$KV." + Bucket + "." // + the call id
	// kvOperation marks a deleted or purged key, with kvDelete or
	// kvPurge.
	kvOperation = "KV-Operation"
	kvDelete    = "DEL"
	kvPurge     = "PURGE"
)

// recentScan multiplies a listing's limit into the most stream sequences
// it reads back: 20×limit, so 10,000 at MaxRecent. A call's record is
// usually written three times (queued, running, then succeeded or failed)
// and each write removes the one before, so the last 3×limit sequences
// typically hold limit calls; the rest is room for calls of other
// functions and for churn.
const recentScan = 20

// recentWindow is how many sequences a backwards scan reads at once.
const recentWindow = 64

// checkLimit says whether limit is one Recent and RecentDeadLetters take.
func checkLimit(limit int) error {
	if limit < 1 || limit > MaxRecent {
		return fmt.Errorf("calls: %w, not %d", ErrBadLimit, limit)
	}
	return nil
}

// Recent returns the records of the calls changed most recently, newest
// change first: at most limit of them (1 to MaxRecent, else ErrBadLimit),
// only those of function when it is not "". It is ErrNotSetUp when the
// bucket does not exist, and ends with ctx's error when ctx ends first.
//
// It never lists the bucket's keys, which may be hundreds of thousands:
// it reads the bucket's stream backwards from its last message, where
// every message is the newest revision of its call (the bucket keeps one,
// and a call's marker of deletion or purge hides it). A call changed
// while Recent reads may be left out.
//
// "Recent" is best effort: Recent reads at most 20×limit sequences back
// (10,000 at MaxRecent), each message removed since (by a newer revision,
// a deletion or the bucket's TTL) counting as one. A call's three writes
// make limit calls typically fill the last 3×limit sequences; but when
// calls of other functions, or rewrites, crowd the end of the stream,
// Recent returns fewer than limit records although older ones exist.
func (q *Queue) Recent(ctx context.Context, limit int, function string) ([]Record, error) {
	if err := checkLimit(limit); err != nil {
		return nil, err
	}
	s, err := q.js.Stream(ctx, bucketStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, ErrNotSetUp
	}
	if err != nil {
		return nil, fmt.Errorf("calls: open stream %s of bucket %s: %w", bucketStream, Bucket, err)
	}
	var out []Record
	// A newer revision of a call was read already, or its deletion.
	seen := make(map[string]bool)
	err = scanBack(ctx, s, recentScan*limit, func(m *jetstream.RawStreamMsg) (bool, error) {
		id := strings.TrimPrefix(m.Subject, bucketSubject)
		if seen[id] {
			return true, nil
		}
		seen[id] = true
		if op := m.Header.Get(kvOperation); op == kvDelete || op == kvPurge {
			return true, nil
		}
		var rec Record
		if err := json.Unmarshal(m.Data, &rec); err != nil {
			return false, fmt.Errorf("calls: decode call %s: %w", id, err)
		}
		if function == "" || rec.Function == function {
			out = append(out, rec)
		}
		return len(out) < limit, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// scanBack hands the messages of s to take, newest first, from the last
// one back, until take returns false or an error, it has passed the first
// message, or it has read scan sequences: a sequence whose message is
// gone counts.
//
// It asks for recentWindow sequences at once, one request each, which
// JetStream answers by direct get where the stream allows it (a key-value
// bucket's does). A batched direct get (nats-server 2.11) would take one
// request per window, but the server counts the stream's pending
// messages for each, and on a stream with gaps, which a bucket's rewrites
// leave, that walks every key: over the last 150 sequences of a bucket of
// 50,000 calls, one batch took 25 ms, 150 single gets at once 3.5 ms, and
// one after the other 15 ms.
func scanBack(ctx context.Context, s jetstream.Stream, scan int, take func(*jetstream.RawStreamMsg) (more bool, err error)) error {
	st := s.CachedInfo().State
	if st.Msgs == 0 {
		return nil
	}
	for next := st.LastSeq; scan > 0 && next >= st.FirstSeq; {
		n := min(uint64(recentWindow), uint64(scan), next-st.FirstSeq+1)
		msgs, err := getBack(ctx, s, next, int(n))
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m == nil {
				continue
			}
			if more, err := take(m); err != nil || !more {
				return err
			}
		}
		next -= n
		scan -= int(n)
	}
	return nil
}

// getBack reads the messages of s at sequences hi, hi-1, … hi-n+1, in
// that order, n requests at once; a message gone is nil.
func getBack(ctx context.Context, s jetstream.Stream, hi uint64, n int) ([]*jetstream.RawStreamMsg, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("calls: read stream %s: %w", s.CachedInfo().Config.Name, err)
	}
	msgs := make([]*jetstream.RawStreamMsg, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			m, err := s.GetMsg(ctx, hi-uint64(i))
			if !errors.Is(err, jetstream.ErrMsgNotFound) {
				msgs[i], errs[i] = m, err
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("calls: read stream %s at sequence %d: %w", s.CachedInfo().Config.Name, hi-uint64(i), err)
		}
	}
	return msgs, nil
}
