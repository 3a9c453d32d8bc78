package calls

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/callback"
)

// DeadLetter is a call in the dead-letter stream.
type DeadLetter struct {
	// Seq is its sequence in the dead-letter stream.
	Seq         uint64            `json:"seq"`
	ID          string            `json:"id"`
	Function    string            `json:"function"`
	Attempts    int               `json:"attempts"`
	Error       *invocation.Error `json:"error"`
	SubmittedAt time.Time         `json:"submitted_at,omitzero"`
	FailedAt    time.Time         `json:"failed_at"`
	// Size is the request body's size in bytes.
	Size int `json:"size"`
	// BodyDropped is set when the request body was too large to keep
	// with the error's headers in a NATS message: the call cannot be
	// re-driven, only submitted again.
	BodyDropped bool `json:"body_dropped,omitempty"`
}

// ErrNotDeadLettered means the dead-letter stream holds no call of that id.
var ErrNotDeadLettered = errors.New("no dead-lettered call of that id")

// ErrBodyDropped means a dead-lettered call cannot be re-driven: its
// request body was too large to keep with its error. It can only be
// submitted again.
var ErrBodyDropped = errors.New("its request body was too large to keep with its error; submit it again")

// deadLetterOf is the dead letter m: all of it is in the headers but the
// size of the body, which a listing does not read.
func deadLetterOf(m stored) DeadLetter {
	h := m.Header
	d := DeadLetter{Seq: m.Seq, ID: h.Get(HeaderCallID), Function: h.Get(HeaderFunction), FailedAt: m.Time.UTC(), Size: m.Size}
	d.Attempts, _ = strconv.Atoi(h.Get(HeaderAttempts))
	d.BodyDropped = h.Get(HeaderBodyDropped) != ""
	d.SubmittedAt, _ = time.Parse(time.RFC3339Nano, h.Get(HeaderSubmitted))
	status, _ := strconv.Atoi(h.Get(invocation.HeaderStatus))
	d.Error = &invocation.Error{Status: status, Code: invocation.Code(h.Get(invocation.HeaderError)), Message: h.Get(HeaderErrorMessage)}
	return d
}

// DeadLetters lists the dead-lettered calls, oldest first, at most limit
// of them (0: all). Like RecentDeadLetters, it reads their headers only.
func DeadLetters(ctx context.Context, js jetstream.JetStream, limit int) ([]DeadLetter, error) {
	s, err := js.Stream(ctx, DLQStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, ErrNotSetUp
	}
	if err != nil {
		return nil, fmt.Errorf("calls: open stream %s: %w", DLQStream, err)
	}
	st := s.CachedInfo().State
	if st.Msgs == 0 {
		return nil, nil
	}
	var out []DeadLetter
	err = scanHeaders(ctx, s, st.FirstSeq, st.LastSeq, func(m stored) bool {
		out = append(out, deadLetterOf(m))
		return limit == 0 || len(out) < limit
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// RecentDeadLetters lists the dead-lettered calls newest first, as a
// console shows them: at most limit of them (1 to MaxRecent, else
// ErrBadLimit). It reads the headers only of the dead-letter stream's
// last messages, which hold all a DeadLetter says, never the requests'
// bodies, which may be MiBs each. Like Queue.Recent, it reads at most
// 20×limit sequences back: the calls re-driven or discarded among the
// newest leave gaps that count, so after many of those it may return
// fewer than limit while older ones remain, which DeadLetters lists
// (oldest first).
func RecentDeadLetters(ctx context.Context, js jetstream.JetStream, limit int) ([]DeadLetter, error) {
	if err := checkLimit(limit); err != nil {
		return nil, err
	}
	s, err := js.Stream(ctx, DLQStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, ErrNotSetUp
	}
	if err != nil {
		return nil, fmt.Errorf("calls: open stream %s: %w", DLQStream, err)
	}
	last, err := scanBack(ctx, s, recentScan*limit)
	if err != nil {
		return nil, err
	}
	out := make([]DeadLetter, 0, min(limit, len(last)))
	for _, m := range last[:min(limit, len(last))] {
		out = append(out, deadLetterOf(m))
	}
	return out, nil
}

// findDeadLetter finds the dead letter of call id.
func findDeadLetter(ctx context.Context, js jetstream.JetStream, id string) (jetstream.Stream, *jetstream.RawStreamMsg, error) {
	if !ValidID(id) {
		return nil, nil, ErrNotDeadLettered
	}
	s, err := js.Stream(ctx, DLQStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil, ErrNotSetUp
	}
	if err != nil {
		return nil, nil, fmt.Errorf("calls: open stream %s: %w", DLQStream, err)
	}
	m, err := s.GetLastMsgForSubject(ctx, DLQSubject(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil, ErrNotDeadLettered
	}
	if err != nil {
		return nil, nil, fmt.Errorf("calls: read dead letter %s: %w", id, err)
	}
	return s, m, nil
}

// Retry re-drives a dead-lettered call: it is queued again under the
// same id, with its attempts counted afresh, and leaves the dead-letter
// stream. Its token is checked as of its first submission.
func Retry(ctx context.Context, js jetstream.JetStream, id string) (*DeadLetter, error) {
	s, m, err := findDeadLetter(ctx, js, id)
	if err != nil {
		return nil, err
	}
	d := deadLetterOf(storedOf(m))
	if d.BodyDropped {
		return nil, fmt.Errorf("calls: call %s cannot be re-driven: %w", id, ErrBodyDropped)
	}
	h := make(nats.Header, len(m.Header))
	for k, v := range m.Header {
		switch k {
		case HeaderFunction, HeaderAttempts, invocation.HeaderError, HeaderErrorMessage, invocation.HeaderStatus, HeaderMsgID:
		default:
			h[k] = v
		}
	}
	if d.SubmittedAt.IsZero() {
		h.Set(HeaderSubmitted, m.Time.UTC().Format(time.RFC3339Nano))
	}
	h.Set(HeaderMsgID, "retry-"+id+"-"+strconv.FormatUint(m.Sequence, 10))
	// The record says queued before the call is published: a runner may
	// take it at once, run it and record its end before this function
	// would have written anything after the publish, and what it records
	// must not be replaced by "queued" (nor can a failed record of the new
	// run be told from the old one's).
	rec := &Record{ID: id, Function: d.Function, Status: Queued, SubmittedAt: d.SubmittedAt}
	if cb := h.Get(HeaderCallback); cb != "" {
		rec.Callback = &Callback{URL: callback.Redact(cb), State: CallbackPending}
	}
	restore, err := NewQueue(js).requeued(ctx, rec)
	if err != nil {
		return nil, err // nothing changed but perhaps the record: safe to try again
	}
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: RetrySubject(d.Function), Header: h, Data: m.Data}); err != nil {
		restore()
		return nil, PublishError(err)
	}
	if err := s.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return &d, fmt.Errorf("calls: call %s is queued again, but its dead letter %d could not be removed: %w", id, m.Sequence, err)
	}
	return &d, nil
}

// Discard removes a dead-lettered call for good.
func Discard(ctx context.Context, js jetstream.JetStream, id string) (*DeadLetter, error) {
	s, m, err := findDeadLetter(ctx, js, id)
	if err != nil {
		return nil, err
	}
	d := deadLetterOf(storedOf(m))
	if err := s.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("calls: remove dead letter %d: %w", m.Sequence, err)
	}
	return &d, nil
}
