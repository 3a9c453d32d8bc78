package calls

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
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

// What Queue.Recent may read of whole records, which hold the functions'
// answers and may each be as large as a NATS message (MiBs): the
// headers it reads first say how large each is.
const (
	// recentParallel is how many records it reads at once, at most.
	recentParallel = 16
	// recentInFlight bounds the bytes of the records it reads at once,
	// though one is always read whatever its size: the replies share the
	// connection's buffers with its other traffic, and a client drops
	// what overflows them (a "slow consumer").
	recentInFlight = 16 << 20
	// recentBudget bounds the bytes of the records one Recent reads: past
	// it, Recent returns the records it has, Truncated.
	recentBudget = 64 << 20
)

// checkLimit says whether limit is one Recent and RecentDeadLetters take.
func checkLimit(limit int) error {
	if limit < 1 || limit > MaxRecent {
		return fmt.Errorf("calls: %w, not %d", ErrBadLimit, limit)
	}
	return nil
}

// Listing is what Queue.Recent found.
type Listing struct {
	// Records are the calls' records, newest change first.
	Records []Record
	// Truncated is set when Recent stopped at its budget of bytes read
	// (64 MiB of records: answers' bodies can be large) before it had as
	// many records as asked: older records it would list may exist.
	Truncated bool
	// Skipped counts the records left out because they did not decode:
	// not written by Shoal, or by a version that does not match.
	Skipped int
}

// Recent returns the records of the calls changed most recently, newest
// change first: at most limit of them (1 to MaxRecent, else ErrBadLimit),
// only those of function when it is not "". It is ErrNotSetUp when the
// bucket does not exist, and ends with ctx's error when ctx ends first. A
// record that does not decode is left out and counted in Skipped.
//
// It never lists the bucket's keys, which may be hundreds of thousands,
// and reads in two steps. First the headers alone of the last messages of
// the bucket's stream, through one ordered consumer: each call's newest
// message there is its newest revision, unless it marks the call deleted
// or purged, and says the size of the record. Then the records of those
// calls, whole and newest first, until it has limit of function's: at
// most 16 at once and 16 MiB at once (but always one), and 64 MiB in all,
// past which it returns what it has, Truncated, for the records hold the
// functions' answers, up to the NATS max payload each. Each is read at
// the revision the scan saw, whose size it knows; a call rewritten since
// is read at its newest revision, one such at a time, and listed as last
// written, in the place of the change Recent saw; one deleted meanwhile
// is left out. The scan also takes the messages written while it runs,
// up to as many again as it set out to read, so that a call rewritten
// during the scan (its older revision removed before the scan reached
// it) is still listed; under a stream of rewrites a few may be missed.
//
// "Recent" is best effort: Recent reads at most 20×limit sequences back
// (10,000 at MaxRecent), each message removed since (by a newer revision,
// a deletion or the bucket's TTL) counting as one. A call's three writes
// make limit calls typically fill the last 3×limit sequences; but when
// calls of other functions, or rewrites, crowd the end of the stream,
// Recent returns fewer than limit records although older ones exist.
func (q *Queue) Recent(ctx context.Context, limit int, function string) (Listing, error) {
	if err := checkLimit(limit); err != nil {
		return Listing{}, err
	}
	s, err := q.js.Stream(ctx, bucketStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return Listing{}, ErrNotSetUp
	}
	if err != nil {
		return Listing{}, fmt.Errorf("calls: open stream %s of bucket %s: %w", bucketStream, Bucket, err)
	}
	last, err := scanBack(ctx, s, recentScan*limit)
	if err != nil {
		return Listing{}, err
	}
	// The newest message of each call, unless it marks it deleted.
	var newest []stored
	seen := make(map[string]bool)
	for _, m := range last {
		id := strings.TrimPrefix(m.Subject, bucketSubject)
		if seen[id] {
			continue
		}
		seen[id] = true
		if op := m.Header.Get(kvOperation); op != kvDelete && op != kvPurge {
			newest = append(newest, m)
		}
	}
	budget := recentBudget
	if q.recentBudget > 0 {
		budget = q.recentBudget
	}
	return readRecords(ctx, s, newest, limit, function, budget)
}

// readRecords reads the records of the calls of newest whole, in that
// order, and returns the first limit of function's (all when function is
// ""), reading at most budget bytes, recentParallel records and
// recentInFlight bytes at once.
func readRecords(ctx context.Context, s jetstream.Stream, newest []stored, limit int, function string, budget int) (Listing, error) {
	type read struct {
		m   *jetstream.RawStreamMsg
		err error
		// newer is set when m is a revision newer than the scan's.
		newer bool
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // before the wait: the reads not taken end
	reads := make([]chan read, len(newest))
	// newer serializes the reads of revisions newer than the scan's.
	var newer sync.Mutex
	var l Listing
	// The records from started on are not asked for yet; inFlight bytes
	// of those before it are being read, total in all.
	started, inFlight, total := 0, 0, 0
	atBudget := false
	for next := 0; next < len(newest) && len(l.Records) < limit; next++ {
		// Never more at once than records still wanted: each may be one.
		for !atBudget && started < len(newest) && started-next < min(recentParallel, limit-len(l.Records)) {
			size := newest[started].Size
			if started > next && inFlight+size > recentInFlight {
				break
			}
			if total > 0 && total+size > budget {
				atBudget = true
				break
			}
			inFlight, total = inFlight+size, total+size
			ch := make(chan read, 1)
			reads[started] = ch
			// The revision the scan saw, whose size is known; if it was
			// replaced since, the call's newest, whose size is not:
			// those are read one at a time.
			subject, seq := newest[started].Subject, newest[started].Seq
			wg.Go(func() {
				m, err := s.GetMsg(ctx, seq)
				if !errors.Is(err, jetstream.ErrMsgNotFound) {
					ch <- read{m: m, err: err}
					return
				}
				newer.Lock()
				m, err = s.GetLastMsgForSubject(ctx, subject)
				newer.Unlock()
				ch <- read{m: m, err: err, newer: true}
			})
			started++
		}
		if next == started {
			break // at the budget
		}
		r := <-reads[next]
		inFlight -= newest[next].Size
		if r.newer && r.m != nil {
			total += len(r.m.Data) - newest[next].Size
		}
		id := strings.TrimPrefix(newest[next].Subject, bucketSubject)
		if errors.Is(r.err, jetstream.ErrMsgNotFound) {
			continue // purged and gone since the scan
		}
		if r.err != nil {
			return Listing{}, fmt.Errorf("calls: read call %s: %w", id, r.err)
		}
		if op := r.m.Header.Get(kvOperation); op == kvDelete || op == kvPurge {
			continue // deleted since the scan
		}
		var rec Record
		if err := json.Unmarshal(r.m.Data, &rec); err != nil {
			l.Skipped++
			continue
		}
		if function == "" || rec.Function == function {
			l.Records = append(l.Records, rec)
		}
	}
	// Reads stop at the budget only while fewer are in flight than
	// records still wanted: some may be missing.
	l.Truncated = atBudget
	return l, nil
}

// stored is a message of a stream as read without its body.
type stored struct {
	Subject string
	Seq     uint64
	Time    time.Time
	Header  nats.Header
	// Size is the size of its body in bytes.
	Size int
}

// storedOf is what stored says of m, read whole.
func storedOf(m *jetstream.RawStreamMsg) stored {
	return stored{Subject: m.Subject, Seq: m.Sequence, Time: m.Time, Header: m.Header, Size: len(m.Data)}
}

// scanBack returns the messages of s, without their bodies, newest
// first: those of the last scan sequences, a sequence whose message is
// gone counting as one.
func scanBack(ctx context.Context, s jetstream.Stream, scan int) ([]stored, error) {
	st := s.CachedInfo().State
	if st.Msgs == 0 {
		return nil, nil
	}
	first := st.FirstSeq
	if st.LastSeq >= uint64(scan) {
		first = max(first, st.LastSeq-uint64(scan)+1)
	}
	var out []stored
	err := scanHeaders(ctx, s, first, st.LastSeq, func(m stored) bool {
		out = append(out, m)
		return true
	})
	slices.Reverse(out)
	return out, err
}

// consumerIdle is how long the server keeps a consumer of scanHeaders
// that could not be deleted, and deleteTimeout how long its deletion
// may take.
const (
	consumerIdle  = 30 * time.Second
	deleteTimeout = 2 * time.Second
)

// scanHeaders hands take the messages of s from sequence first to last,
// oldest first and without their bodies, until take returns false. It
// reads them with one ordered consumer, which it deletes when done: the
// server steps over the sequences whose messages are gone and sends the
// headers alone, with the size of the body (Nats-Msg-Size), in batches.
//
// Creating the consumer costs the server a count of the messages from
// first on, which on a bucket keeping one revision per key walks every
// key: 8 ms at 5,000 calls, 27 ms at 50,000 on two cores. Reading by
// sequence costs no such walk but returns the bodies, MiBs each, which
// is what overran the gateway's connection.
func scanHeaders(ctx context.Context, s jetstream.Stream, first, last uint64, take func(stored) bool) error {
	name := s.CachedInfo().Config.Name
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: first, HeadersOnly: true,
		InactiveThreshold: consumerIdle, MaxResetAttempts: 2,
	})
	if err != nil {
		return fmt.Errorf("calls: read stream %s: %w", name, err)
	}
	// An ordered consumer is ephemeral, but the server would keep it,
	// and a console polls; it is gone after consumerIdle if this fails.
	defer func() {
		if info := c.CachedInfo(); info != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
			_ = s.DeleteConsumer(dctx, info.Name)
			cancel()
		}
	}()
	if info := c.CachedInfo(); info == nil || info.NumPending == 0 {
		return nil // all gone from first on
	}
	it, err := c.Messages(jetstream.PullMaxMessages(int(min(last-first+1, 1024))))
	if err != nil {
		return fmt.Errorf("calls: read stream %s: %w", name, err)
	}
	defer it.Stop()
	// Messages written since the scan began are taken too, up to as many
	// again as the range: a call rewritten meanwhile has its older
	// revision removed before the consumer reaches it, and only its new
	// one, past last, to be listed by.
	end := last + (last - first + 1)
	for {
		wait := scanIdle
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl))
		}
		if wait <= 0 {
			return fmt.Errorf("calls: read stream %s: %w", name, context.DeadlineExceeded)
		}
		msg, err := it.Next(jetstream.NextMaxWait(wait))
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("calls: read stream %s: %w", name, ctx.Err())
		case errors.Is(err, nats.ErrTimeout):
			// The messages still pending when the last one came were
			// removed since: there is nothing more.
			return nil
		case err != nil:
			return fmt.Errorf("calls: read stream %s: %w", name, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("calls: read stream %s: %w", name, err)
		}
		seq := meta.Sequence.Stream
		h := msg.Headers()
		size, _ := strconv.Atoi(h.Get(nats.MsgSize))
		if !take(stored{Subject: msg.Subject(), Seq: seq, Time: meta.Timestamp, Header: h, Size: size}) ||
			seq >= end || meta.NumPending == 0 {
			return nil
		}
	}
}

// scanIdle is how long scanHeaders waits for the next message before it
// takes the stream to have no more: the messages counted pending may be
// removed before the server sends them.
const scanIdle = time.Second
