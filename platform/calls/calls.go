// Package calls runs asynchronous function calls on JetStream: a caller
// submits a call and gets its id at once; the call waits on disk in a
// work-queue stream until a runner with a free concurrency slot pulls it,
// runs it at least once, retries it after a failure with the function's
// back-off, and after the last attempt moves it to a dead-letter stream.
// Each call's state and result are kept in a KV bucket with a TTL, and
// published on a subject per function; a callback URL given at
// submission receives the result by HTTP POST, through a stream of its
// own so that delivery survives restarts and is retried.
//
// # On NATS
//
//   - stream SHOAL_CALLS (work queue): a call of function NAME is a
//     message on calls.NAME carrying the same headers and body as a
//     synchronous invocation (docs/nats-api.md) plus Shoal-Call-Id; a call
//     re-driven from the dead-letter stream is on calls.NAME.retry. Each
//     function has a durable pull consumer named NAME that its runners
//     share.
//   - stream SHOAL_CALLS_NATS (work queue): calls NATS clients submitted,
//     on calls.NAME.nats, filed under ids n.ID, with limits and a
//     de-duplication window of their own; consumers as on SHOAL_CALLS.
//   - stream SHOAL_DLQ: a call that failed its last attempt, on dlq.ID,
//     with its error in headers.
//   - stream SHOAL_CALLBACKS (work queue): a result to POST to a callback
//     URL, on callbacks.NAME, consumed by every runner (consumer
//     "callbacks").
//   - KV bucket shoal_calls: the call's [Record] as JSON, by call id.
//   - subjects results.NAME and results.NAME.nats: the final answer of
//     every call of NAME submitted through the gateway, or by a NATS
//     client, in the form of a synchronous reply plus Shoal-Call-Id and
//     Shoal-Call-Status headers (core NATS: only live subscribers see it).
package calls

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/callback"
)

// Names on NATS.
const (
	// Stream holds the calls waiting to run that came through the
	// gateway (calls.NAME) or were re-driven (calls.NAME.retry).
	Stream = "SHOAL_CALLS"
	// ClientStream holds the calls NATS clients submitted
	// (calls.NAME.nats): a stream of its own, with limits and a
	// de-duplication window of its own, so that clients can neither fill
	// the gateway callers' queue nor pass for their resubmissions.
	ClientStream = "SHOAL_CALLS_NATS"
	// DLQStream holds the calls that failed their last attempt.
	DLQStream = "SHOAL_DLQ"
	// CallbackStream holds the results waiting to be POSTed to a
	// callback URL.
	CallbackStream = "SHOAL_CALLBACKS"
	// CallbackConsumer is the durable consumer of CallbackStream.
	CallbackConsumer = "callbacks"
	// Bucket is the KV bucket of call records.
	Bucket = "shoal_calls"
)

// Headers of a call message, besides those of a synchronous invocation.
const (
	// HeaderCallID carries the call's id. A call without one gets its
	// Nats-Msg-Id, else "seq-" and its stream sequence.
	HeaderCallID = "Shoal-Call-Id"
	// HeaderCallback carries the URL the result is POSTed to.
	HeaderCallback = "Shoal-Callback-Url"
	// HeaderSubmitted carries when a re-driven call was first submitted
	// (RFC 3339, nanoseconds); runners trust it only on calls.NAME.retry,
	// a subject callers cannot publish on.
	HeaderSubmitted = "Shoal-Submitted-At"
	// HeaderCallStatus carries a result's status (succeeded or failed).
	HeaderCallStatus = "Shoal-Call-Status"
	// HeaderAttempts carries how many attempts a call had.
	HeaderAttempts = "Shoal-Attempts"
	// HeaderFunction names the function of a dead-lettered call or of a
	// callback.
	HeaderFunction = "Shoal-Function"
	// HeaderMsgID is JetStream's de-duplication header.
	HeaderMsgID = jetstream.MsgIDHeader
)

// Subject is where the gateway submits calls of function name.
func Subject(name string) string { return "calls." + name }

// ClientSubject is where NATS clients (the client role) submit calls of
// function name. Their ids live in a namespace of their own, under
// ClientIDPrefix, so a client can neither choose nor overwrite the id of
// a call submitted through the gateway; their results are published on
// ClientResultSubject.
func ClientSubject(name string) string { return "calls." + name + ".nats" }

// ClientIDPrefix starts the id of every call submitted on ClientSubject:
// the runner puts it before the id the client gave.
const ClientIDPrefix = "n."

// ClientID is the id of a call a NATS client submitted with id raw.
func ClientID(raw string) string { return ClientIDPrefix + raw }

// ClientResultSubject is where the results of calls submitted on
// ClientSubject(name) are published.
func ClientResultSubject(name string) string { return "results." + name + ".nats" }

// RetrySubject is where calls of function name re-driven from the
// dead-letter stream are put.
func RetrySubject(name string) string { return "calls." + name + ".retry" }

// ResultSubject is where the results of function name are published.
func ResultSubject(name string) string { return "results." + name }

// DLQSubject is where the dead-lettered call id is kept.
func DLQSubject(id string) string { return "dlq." + id }

// CallbackSubject is where results of function name wait for their
// callback.
func CallbackSubject(name string) string { return "callbacks." + name }

// Status is where a call stands.
type Status string

// The statuses of a call.
const (
	// Queued: waiting for a runner, for its first attempt or a retry.
	Queued Status = "queued"
	// Running: a runner runs it.
	Running Status = "running"
	// Succeeded: the function answered with a status below 400.
	Succeeded Status = "succeeded"
	// Failed: the last attempt failed, or the function answered 4xx; the
	// call is in the dead-letter stream.
	Failed Status = "failed"
)

// Record is what Shoal knows of a call: GET /calls/ID and the KV bucket
// answer it as JSON, and a callback receives it.
type Record struct {
	ID       string `json:"id"`
	Function string `json:"function"`
	Status   Status `json:"status"`
	// Attempts counts the attempts started so far; MaxAttempts is the
	// function's max_deliver when the call last ran.
	Attempts    int       `json:"attempts"`
	MaxAttempts int       `json:"max_attempts,omitempty"`
	SubmittedAt time.Time `json:"submitted_at"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	FinishedAt  time.Time `json:"finished_at,omitzero"`
	// NextAttemptAt is when a failed attempt is retried.
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	// Runner is the id of the runner of the last attempt.
	Runner string `json:"runner,omitempty"`
	// Seq is the calls stream's sequence of the message the record was
	// last written for (a call re-driven from the dead letters is a new
	// message); Interruptions counts the attempts of that message cut
	// short by a runner's shutdown, which do not count as attempts.
	Seq           uint64 `json:"seq,omitempty"`
	Interruptions int    `json:"interruptions,omitempty"`
	// Response is the function's answer, once it has answered.
	Response *Response `json:"response,omitempty"`
	// Error is why the call failed, or why the last attempt did.
	Error *invocation.Error `json:"error,omitempty"`
	// Callback is the delivery of the result to the callback URL.
	Callback *Callback `json:"callback,omitempty"`
}

// Response is a function's answer to a call.
type Response struct {
	Status int         `json:"status"`
	Header http.Header `json:"headers,omitempty"`
	// Body is the answer's body (base64 in JSON).
	Body []byte `json:"body,omitempty"`
	// BodyDropped is set when the body was too large to keep in the
	// record; it was published on the result subject all the same.
	BodyDropped bool `json:"body_dropped,omitempty"`
}

// Callback is the state of a call's callback.
type Callback struct {
	// URL is the callback URL without its query (which may hold a secret).
	URL string `json:"url"`
	// State is pending, delivered or failed.
	State     string    `json:"state"`
	Attempts  int       `json:"attempts,omitempty"`
	LastError string    `json:"last_error,omitempty"`
	Delivered time.Time `json:"delivered_at,omitzero"`
}

// Callback states.
const (
	CallbackPending   = "pending"
	CallbackDelivered = "delivered"
	CallbackFailed    = "failed"
)

// Limits bound what the streams and the bucket keep. Setup applies them.
type Limits struct {
	// MaxQueued and MaxBytes bound the calls waiting; past either,
	// submission is refused (ErrQueueFull), and nothing accepted is lost.
	MaxQueued int64
	MaxBytes  int64
	// MaxAge drops a call that waited longer (0: no limit). Unlike the
	// other limits this does lose calls: keep it well above any backlog.
	MaxAge time.Duration
	// Dedupe is the window within which a resubmission with the same
	// Idempotency-Key is recognised by JetStream itself (beyond it, as
	// long as the call's record is kept, the record is).
	Dedupe time.Duration
	// ResultsTTL is how long a call's record is kept after its last
	// change.
	ResultsTTL time.Duration
	// DLQMaxAge and DLQMaxBytes bound the dead-letter stream; past
	// them the oldest entries go.
	DLQMaxAge   time.Duration
	DLQMaxBytes int64
	// Replicas of the streams and the bucket: 1 on one server, 3 in a
	// cluster; 0 keeps existing ones as they are and creates with 1.
	Replicas int
}

// DefaultLimits are the limits unless configured otherwise.
func DefaultLimits() Limits {
	return Limits{
		MaxQueued:   100_000,
		MaxBytes:    1 << 30,
		MaxAge:      7 * 24 * time.Hour,
		Dedupe:      10 * time.Minute,
		ResultsTTL:  24 * time.Hour,
		DLQMaxAge:   14 * 24 * time.Hour,
		DLQMaxBytes: 1 << 30,
	}
}

// Check says what is wrong with l, if anything.
func (l Limits) Check() error {
	var errs []error
	if l.MaxQueued < 1 {
		errs = append(errs, fmt.Errorf("max queued calls %d: want at least 1", l.MaxQueued))
	}
	if l.MaxBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("max queued bytes %d: want at least 1MiB", l.MaxBytes))
	}
	if l.MaxAge != 0 && l.MaxAge < time.Minute {
		errs = append(errs, fmt.Errorf("max call age %s: want 0 (none) or at least 1m", l.MaxAge))
	}
	if l.Dedupe < time.Second {
		errs = append(errs, fmt.Errorf("dedupe window %s: want at least 1s", l.Dedupe))
	}
	if l.ResultsTTL < time.Second {
		errs = append(errs, fmt.Errorf("results TTL %s: want at least 1s", l.ResultsTTL))
	}
	if l.DLQMaxAge < time.Minute {
		errs = append(errs, fmt.Errorf("dead-letter max age %s: want at least 1m", l.DLQMaxAge))
	}
	if l.DLQMaxBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("dead-letter max bytes %d: want at least 1MiB", l.DLQMaxBytes))
	}
	if l.Replicas < 0 || l.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas %d: want 0 to 5", l.Replicas))
	}
	return errors.Join(errs...)
}

// Setup creates the streams and the bucket, or updates their limits to l.
// It is idempotent; deployments run it with `shoal deploy` and `shoal up`.
func Setup(ctx context.Context, js jetstream.JetStream, l Limits) error {
	if err := l.Check(); err != nil {
		return fmt.Errorf("calls: %w", err)
	}
	dedupe := min(l.Dedupe, l.MaxAge)
	if l.MaxAge == 0 {
		dedupe = l.Dedupe
	}
	queue := jetstream.StreamConfig{
		Name:        Stream,
		Description: "Shoal: asynchronous calls waiting to run, from the gateway (calls.FUNCTION) or re-driven (calls.FUNCTION.retry)",
		Subjects:    []string{"calls.*", "calls.*.retry"},
		Retention:   jetstream.WorkQueuePolicy,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     l.MaxQueued,
		MaxBytes:    l.MaxBytes,
		MaxAge:      l.MaxAge,
		Duplicates:  dedupe,
		Storage:     jetstream.FileStorage,
	}
	clients := queue
	clients.Name, clients.Subjects = ClientStream, []string{"calls.*.nats"}
	clients.Description = "Shoal: asynchronous calls waiting to run, from NATS clients (calls.FUNCTION.nats)"
	// Stream first: a stream created by an earlier build held calls.>,
	// which ClientStream's subjects would overlap.
	streams := []jetstream.StreamConfig{queue, clients, {
		Name:        DLQStream,
		Description: "Shoal: asynchronous calls that failed their last attempt (dlq.ID)",
		Subjects:    []string{"dlq.>"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      l.DLQMaxAge,
		MaxBytes:    l.DLQMaxBytes,
		// JetStream refuses a window longer than the max age, which
		// may be as short as a minute.
		Duplicates: min(2*time.Minute, l.DLQMaxAge),
		Storage:    jetstream.FileStorage,
	}, {
		Name:        CallbackStream,
		Description: "Shoal: results waiting to be POSTed to their callback URL (callbacks.FUNCTION)",
		Subjects:    []string{"callbacks.>"},
		Retention:   jetstream.WorkQueuePolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      l.ResultsTTL,
		MaxBytes:    l.MaxBytes,
		Storage:     jetstream.FileStorage,
	}}
	for _, cfg := range streams {
		cfg.Replicas = l.Replicas
		if err := setupStream(ctx, js, cfg); err != nil {
			return err
		}
	}
	kvCfg := jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Shoal: asynchronous calls' state and result by call id (calls.Record JSON)",
		History:     1,
		TTL:         l.ResultsTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    l.Replicas,
	}
	if kvCfg.Replicas == 0 {
		if kv, err := js.KeyValue(ctx, Bucket); err == nil {
			st, err := kv.Status(ctx)
			if err != nil {
				return fmt.Errorf("calls: read bucket %s: %w", Bucket, err)
			}
			kvCfg.Replicas = st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Replicas
		} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return fmt.Errorf("calls: open bucket %s: %w", Bucket, err)
		}
	}
	kvCfg.Replicas = max(kvCfg.Replicas, 1)
	if _, err := js.CreateOrUpdateKeyValue(ctx, kvCfg); err != nil {
		return fmt.Errorf("calls: create bucket %s: %w", Bucket, err)
	}
	return nil
}

// CurrentLimits reads the limits the streams and bucket have now; ok is
// false when they are not set up. Replicas is left 0 (keep).
func CurrentLimits(ctx context.Context, js jetstream.JetStream) (l Limits, ok bool, err error) {
	calls, err := js.Stream(ctx, Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return Limits{}, false, nil
	}
	if err != nil {
		return Limits{}, false, fmt.Errorf("calls: read stream %s: %w", Stream, err)
	}
	c := calls.CachedInfo().Config
	l = Limits{MaxQueued: c.MaxMsgs, MaxBytes: c.MaxBytes, MaxAge: c.MaxAge, Dedupe: c.Duplicates}
	// A setup cut short left the rest missing: the defaults, for Setup
	// to create them with.
	def := DefaultLimits()
	l.DLQMaxAge, l.DLQMaxBytes, l.ResultsTTL = def.DLQMaxAge, def.DLQMaxBytes, def.ResultsTTL
	dlq, err := js.Stream(ctx, DLQStream)
	switch {
	case err == nil:
		l.DLQMaxAge, l.DLQMaxBytes = dlq.CachedInfo().Config.MaxAge, dlq.CachedInfo().Config.MaxBytes
	case !errors.Is(err, jetstream.ErrStreamNotFound):
		return Limits{}, false, fmt.Errorf("calls: read stream %s: %w", DLQStream, err)
	}
	kv, err := js.KeyValue(ctx, Bucket)
	switch {
	case err == nil:
		st, err := kv.Status(ctx)
		if err != nil {
			return Limits{}, false, fmt.Errorf("calls: read bucket %s: %w", Bucket, err)
		}
		l.ResultsTTL = st.TTL()
	case !errors.Is(err, jetstream.ErrBucketNotFound):
		return Limits{}, false, fmt.Errorf("calls: open bucket %s: %w", Bucket, err)
	}
	return l, true, nil
}

// setupStream creates or updates a stream; replicas 0 keeps an existing
// stream's.
func setupStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	if cfg.Replicas == 0 {
		s, err := js.Stream(ctx, cfg.Name)
		switch {
		case err == nil:
			cfg.Replicas = s.CachedInfo().Config.Replicas
		case !errors.Is(err, jetstream.ErrStreamNotFound):
			return fmt.Errorf("calls: read stream %s: %w", cfg.Name, err)
		}
	}
	cfg.Replicas = max(cfg.Replicas, 1)
	if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("calls: create stream %s: %w", cfg.Name, err)
	}
	return nil
}

// Errors of submission and lookup.
var (
	// ErrQueueFull means the calls stream is at its limit: the call was
	// not accepted; try again later.
	ErrQueueFull = errors.New("the queue of asynchronous calls is full")
	// ErrNotSetUp means the streams and bucket do not exist on this NATS.
	ErrNotSetUp = errors.New("asynchronous calls are not set up on this NATS (`shoal deploy` or `shoal up` sets them up), or JetStream does not answer")
	// ErrNotFound means no record of the call exists (never submitted,
	// or expired).
	ErrNotFound = errors.New("no such call")
)

// idRE is the syntax of call ids: safe as a KV key and in a subject;
// the ids of calls NATS clients submitted start with ClientIDPrefix.
var idRE = regexp.MustCompile(`^(n\.)?[A-Za-z0-9_-]{1,128}$`)

// ValidID reports whether id can name a call.
func ValidID(id string) bool { return idRE.MatchString(id) }

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewID returns a random call id: 128 bits, 26 characters.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return idEncoding.EncodeToString(b[:])
}

// IdempotentID is the call id of a submission with an Idempotency-Key:
// the same function, caller (the token's subject, "" without one) and
// key always give the same id, and different callers never share one.
func IdempotentID(function, principal, key string) string {
	h := sha256.Sum256([]byte(function + "\x00" + principal + "\x00" + key))
	return "k" + idEncoding.EncodeToString(h[:16])
}

// Queue submits calls and reads their records. It is safe for
// concurrent use; it opens the bucket on first use, so that a gateway
// can start before the calls are set up.
type Queue struct {
	js jetstream.JetStream
	mu sync.Mutex
	kv jetstream.KeyValue
	// recentBudget, when set, replaces Recent's budget of bytes (tests).
	recentBudget int
}

// NewQueue returns a Queue on js.
func NewQueue(js jetstream.JetStream) *Queue { return &Queue{js: js} }

// bucket returns the records' bucket, opening it on first use.
func (q *Queue) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.kv != nil {
		return q.kv, nil
	}
	kv, err := q.js.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, ErrNotSetUp
	}
	if err != nil {
		return nil, fmt.Errorf("calls: open bucket %s: %w", Bucket, err)
	}
	q.kv = kv
	return kv, nil
}

// Get returns the record of call id; ErrNotFound when there is none.
func (q *Queue) Get(ctx context.Context, id string) (*Record, error) {
	if !ValidID(id) {
		return nil, ErrNotFound
	}
	kv, err := q.bucket(ctx)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("calls: read call %s: %w", id, err)
	}
	var rec Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, fmt.Errorf("calls: decode call %s: %w", id, err)
	}
	return &rec, nil
}

// Submission is a call to submit.
type Submission struct {
	// Function is the function's name.
	Function string
	// Msg is the invocation as for a synchronous call
	// (invocation.NewRequestMsg); its subject is replaced.
	Msg *nats.Msg
	// IdempotencyKey, when set, makes the call id derive from it (see
	// IdempotentID), so that a resubmission returns the first call.
	IdempotencyKey string
	// Principal is the caller's identity for IdempotencyKey: the
	// token's subject, "" for an anonymous caller.
	Principal string
	// Callback is the URL the result is POSTed to, checked already.
	Callback string
}

// Submitted is the outcome of a submission.
type Submitted struct {
	ID string
	// Duplicate is set when the submission repeated an earlier one (same
	// Idempotency-Key): nothing new was queued.
	Duplicate bool
	// Record is the call's record as written at submission, or, for a
	// duplicate, as found (nil if the first submission's record is not
	// written yet).
	Record *Record
}

// Submit stores the call durably in the calls stream and records it as
// queued. A nil error means the call is on disk (and on a quorum of
// replicas). The error is ErrQueueFull when the stream is at its limit,
// ErrNotSetUp when it does not exist.
func (q *Queue) Submit(ctx context.Context, s Submission) (*Submitted, error) {
	id := NewID()
	if s.IdempotencyKey != "" {
		id = IdempotentID(s.Function, s.Principal, s.IdempotencyKey)
		// Beyond JetStream's de-duplication window, the record still
		// knows the call.
		if rec, err := q.Get(ctx, id); err == nil {
			return &Submitted{ID: id, Duplicate: true, Record: rec}, nil
		} else if !errors.Is(err, ErrNotFound) {
			return nil, err
		}
	}
	msg := s.Msg
	msg.Subject = Subject(s.Function)
	msg.Header.Set(HeaderCallID, id)
	msg.Header.Set(HeaderMsgID, id)
	if s.Callback != "" {
		msg.Header.Set(HeaderCallback, s.Callback)
	}
	ack, retried, err := q.publish(ctx, msg)
	if err != nil {
		return nil, err
	}
	// A duplicate after a retried publish is most likely this call's own
	// first attempt, stored but unacknowledged: a new call, to record.
	out := &Submitted{ID: id, Duplicate: ack.Duplicate && !retried}
	kv, err := q.bucket(ctx)
	if err != nil {
		return out, err
	}
	if out.Duplicate {
		out.Record, _ = q.Get(ctx, id) // nil while not written yet
		return out, nil
	}
	rec := &Record{ID: id, Function: s.Function, Status: Queued, SubmittedAt: time.Now().UTC()}
	if s.Callback != "" {
		rec.Callback = &Callback{URL: callback.Redact(s.Callback), State: CallbackPending}
	}
	out.Record = rec
	data, err := json.Marshal(rec)
	if err != nil {
		return out, fmt.Errorf("calls: encode record: %w", err)
	}
	// Create, not Put: a runner quick enough to have started the call
	// has written a newer record already (or, after a retried publish,
	// the call was an earlier one's duplicate after all): that one is
	// the call's record.
	_, err = kv.Create(ctx, id, data)
	switch {
	case errors.Is(err, jetstream.ErrKeyExists):
		if found, gerr := q.Get(ctx, id); gerr == nil {
			out.Record = found
		}
	case err != nil:
		return out, fmt.Errorf("calls: record call %s as queued (the call is queued): %w", id, err)
	}
	return out, nil
}

// requeued records a dead-lettered call as queued, before it is
// re-driven, unless its record no longer says failed (an earlier retry
// queued it already). restore puts back the record it replaced, unless
// something changed it since, for when the call could not be re-driven.
func (q *Queue) requeued(ctx context.Context, rec *Record) (restore func(), err error) {
	prev, rev, err := q.change(ctx, rec.ID, func(cur *Record) *Record {
		if cur != nil && cur.Status != Failed {
			return nil
		}
		return rec
	})
	switch {
	case err != nil:
		return nil, fmt.Errorf("calls: record call %s as queued: %w", rec.ID, err)
	case rev == 0:
		return func() {}, nil
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		kv, err := q.bucket(ctx)
		if err != nil {
			return
		}
		if prev == nil {
			_ = kv.Delete(ctx, rec.ID, jetstream.LastRevision(rev)) // unless changed since
		} else {
			_, _ = kv.Update(ctx, rec.ID, prev, rev) // unless changed since
		}
	}, nil
}

// change rewrites the record of call id atomically: edit gets the record
// as it is (nil when there is none) and returns the one to write, or nil
// to leave it. Another writer coming between the read and the write
// makes it read again. It returns the value it replaced (nil when it
// created the record) and the new revision, 0 when it wrote nothing.
func (q *Queue) change(ctx context.Context, id string, edit func(cur *Record) *Record) (prev []byte, rev uint64, err error) {
	kv, err := q.bucket(ctx)
	if err != nil {
		return nil, 0, err
	}
	for range 5 {
		e, err := kv.Get(ctx, id)
		var cur *Record
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
		case err != nil:
			return nil, 0, fmt.Errorf("read call %s: %w", id, err)
		default:
			cur = new(Record)
			if err := json.Unmarshal(e.Value(), cur); err != nil {
				return nil, 0, fmt.Errorf("decode call %s: %w", id, err)
			}
		}
		next := edit(cur)
		if next == nil {
			return nil, 0, nil
		}
		data, err := json.Marshal(next)
		if err != nil {
			return nil, 0, fmt.Errorf("encode call %s: %w", id, err)
		}
		if cur == nil {
			rev, err = kv.Create(ctx, id, data)
		} else {
			prev = e.Value()
			rev, err = kv.Update(ctx, id, data, e.Revision())
		}
		if err == nil {
			return prev, rev, nil
		}
		// A replicated bucket reports a conflict as a revision mismatch
		// only.
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return nil, 0, fmt.Errorf("write call %s: %w", id, err)
		}
	}
	return nil, 0, fmt.Errorf("the record of call %s keeps changing; try again", id)
}

// publishAttempt bounds one attempt to store a call, and publishRetry
// the time spent trying again while NATS or JetStream does not answer.
const (
	publishAttempt = 2 * time.Second
	publishRetry   = 10 * time.Second
	// noStreamRetry is shorter: a stream missing for that long is
	// missing, not restarting.
	noStreamRetry = 3 * time.Second
)

// publish stores a call, trying again in short attempts while NATS or
// JetStream is unreachable (reconnecting, restarting, electing a
// leader) for up to publishRetry, or until ctx ends: the call's
// Nats-Msg-Id makes a second store of the same call a duplicate, never a
// second call. A full queue is answered at once.
func (q *Queue) publish(ctx context.Context, msg *nats.Msg) (ack *jetstream.PubAck, retried bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, publishRetry)
	defer cancel()
	start := time.Now()
	// maybeStored: an earlier attempt failed after the call may have
	// reached the stream (no answer in time, the connection dropped).
	maybeStored := false
	for {
		actx, cancel := context.WithTimeout(ctx, publishAttempt)
		ack, err := q.js.PublishMsg(actx, msg)
		cancel()
		if err == nil {
			return ack, maybeStored, nil
		}
		perr := PublishError(err)
		if errors.Is(perr, ErrNotSetUp) && time.Since(start) > noStreamRetry {
			return nil, false, perr
		}
		unanswered := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
			errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrConnectionReconnecting)
		if !unanswered && !errors.Is(perr, ErrNotSetUp) {
			return nil, false, perr
		}
		maybeStored = maybeStored || unanswered
		select {
		case <-ctx.Done():
			return nil, false, fmt.Errorf("calls: store the call: %w (gave up: %w)", err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// PublishError maps the error of a publish to the calls stream (by
// Queue.Submit, or by a NATS client on ClientSubject) to ErrNotSetUp or
// ErrQueueFull where it is one of those.
func PublishError(err error) error {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		return ErrNotSetUp
	}
	if apiErr, ok := errors.AsType[*jetstream.APIError](err); ok && apiErr.ErrorCode == jetstream.ErrorCode(10077) &&
		strings.Contains(apiErr.Description, "maximum") {
		return fmt.Errorf("%w (%s)", ErrQueueFull, apiErr.Description)
	}
	return fmt.Errorf("calls: store the call: %w", err)
}
