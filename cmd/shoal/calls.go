package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/callback"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/platform/gateway"
)

// Following an asynchronous call (invoke --async --wait): its record is
// read pollFirst after the last change seen, then half as long again
// each time, up to pollMax; one reading takes at most pollAttempt.
const (
	pollFirst   = 100 * time.Millisecond
	pollMax     = time.Second
	pollAttempt = 5 * time.Second
)

// submission is an asynchronous call as its submission answered.
type submission struct {
	id string
	// duplicate: an earlier submission with the same idempotency key
	// queued the call; nothing new was.
	duplicate bool
	// status and header are what -i prints: the gateway's 202 and its
	// headers, or (over NATS, status 0) JetStream's acknowledgement.
	status int
	header http.Header
}

// recordSource reads a call's record: nil and no error while the call has
// none yet (a call submitted over NATS has none until a runner takes it).
// A permanentError means that reading again is of no use.
type recordSource func(ctx context.Context) (*calls.Record, error)

// permanentError is a failure to read a call's record that polling again
// cannot cure (a refused token, no asynchronous calls on the platform).
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// invokeAsync submits an asynchronous call and prints its id; with --wait
// it follows the call to its end and prints its answer as invoke prints a
// synchronous one.
func invokeAsync(ctx context.Context, out, errOut io.Writer, name string, r request, o invokeOptions) error {
	var (
		sub  *submission
		read recordSource
	)
	if o.nats.url != "" {
		nc, err := o.nats.connect("shoal-invoke")
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}
		if sub, err = submitNATS(ctx, js, name, r, o); err != nil {
			return fmt.Errorf("invoke --async %s: %w", name, err)
		}
		read = natsRecords(js, sub.id)
	} else {
		var refused *answer
		var err error
		sub, refused, err = submitHTTP(ctx, name, r, o)
		if err != nil {
			return fmt.Errorf("invoke --async %s: %w", name, err)
		}
		if refused != nil {
			// The gateway's error, printed as invoke prints any.
			return printAnswer(out, name, refused, o.include)
		}
		read = httpRecords(o.gateway, sub.id, r.header.Values("Authorization"))
	}
	if !o.wait {
		if o.include {
			printSubmission(out, sub)
		}
		fmt.Fprintln(out, sub.id)
		if sub.duplicate {
			fmt.Fprintf(errOut, "call %s was submitted earlier with this idempotency key; nothing new was queued\n", sub.id)
		}
		return nil
	}
	again := ""
	if sub.duplicate {
		again = " earlier, with this idempotency key"
	}
	fmt.Fprintf(errOut, "call %s of %s submitted%s\n", sub.id, name, again)
	rec, err := followCall(ctx, errOut, sub.id, read, o.timeout)
	if err != nil {
		return err
	}
	return printOutcome(out, errOut, name, rec, o.include)
}

// printSubmission writes what -i shows of a submission before the id.
func printSubmission(out io.Writer, sub *submission) {
	if sub.status != 0 {
		printHead(out, sub.status, sub.header)
		return
	}
	for _, k := range []string{"Stream", "Sequence", "Duplicate"} {
		if v := sub.header.Get(k); v != "" {
			fmt.Fprintf(out, "%s: %s\n", k, v)
		}
	}
	fmt.Fprintln(out)
}

// submitHTTP submits the call to the gateway. A gateway that refuses it
// gives its answer, for invoke to print.
func submitHTTP(ctx context.Context, name string, r request, o invokeOptions) (*submission, *answer, error) {
	u, err := functionURL(o.gateway, "/async-function/", name, r)
	if err != nil {
		return nil, nil, err
	}
	header := r.header.Clone()
	if o.idempotencyKey != "" {
		header.Set(gateway.HeaderIdempotencyKey, o.idempotencyKey)
	}
	if o.callback != "" {
		header.Set(gateway.HeaderCallbackURL, o.callback)
	}
	a, err := doHTTP(ctx, r.method, u, header, r.body)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case a.status >= 400:
		return nil, a, nil
	case a.status != http.StatusAccepted:
		return nil, nil, fmt.Errorf("the gateway answered %d %s, not 202 Accepted: is %s a Shoal gateway that takes asynchronous calls?",
			a.status, http.StatusText(a.status), o.gateway)
	}
	var acc struct {
		ID        string `json:"id"`
		Duplicate bool   `json:"duplicate"`
	}
	if err := json.Unmarshal(a.body, &acc); err != nil {
		return nil, nil, fmt.Errorf("read the gateway's answer: %w", err)
	}
	id := a.header.Get(gateway.HeaderCallID)
	if id == "" {
		id = acc.ID
	}
	if !calls.ValidID(id) {
		return nil, nil, fmt.Errorf("the gateway answered 202 without a valid call id (%q)", id)
	}
	return &submission{id: id, duplicate: acc.Duplicate, status: a.status, header: a.header}, nil, nil
}

// anyAddress checks a callback URL's syntax only: which addresses it may
// reach is the platform's policy, checked by the runner that delivers it.
var anyAddress = func() *callback.Policy {
	p, err := callback.ParsePolicy([]string{"0.0.0.0/0", "::/0"})
	if err != nil {
		panic(err) // a programming error: the entries are valid
	}
	return p
}()

// submitNATS publishes the call on calls.NAME with JetStream, as the
// gateway does: the invocation's headers and body, plus its id as
// Shoal-Call-Id and Nats-Msg-Id (JetStream de-duplicates resubmissions by
// it). The client role cannot write records: the call has none until a
// runner takes it.
func submitNATS(ctx context.Context, js jetstream.JetStream, name string, r request, o invokeOptions) (*submission, error) {
	if name == "" || strings.ContainsAny(name, ".*> \t\r\n") {
		return nil, fmt.Errorf("%q is not a function name", name)
	}
	if o.callback != "" {
		if _, err := anyAddress.CheckURL(o.callback); err != nil {
			return nil, fmt.Errorf("--callback: %w", err)
		}
	}
	id := calls.NewID()
	if o.idempotencyKey != "" {
		// The gateway derives the id from the token's subject too; over
		// NATS every client is the same principal.
		id = calls.IdempotentID(name, "", o.idempotencyKey)
		// Beyond JetStream's de-duplication window the record still
		// knows the call, as on the gateway.
		_, err := calls.NewQueue(js).Get(ctx, calls.ClientID(id))
		switch {
		case err == nil:
			return &submission{id: calls.ClientID(id), duplicate: true, header: http.Header{"Duplicate": {"true"}}}, nil
		case !errors.Is(err, calls.ErrNotFound):
			return nil, fmt.Errorf("look for an earlier call with this idempotency key: %w", err)
		}
	}
	// The runner files the call under calls.ClientID(id): clients have
	// an id namespace of their own.
	msg := requestMsg(calls.ClientSubject(name), r)
	msg.Header.Set(calls.HeaderCallID, id)
	msg.Header.Set(calls.HeaderMsgID, calls.ClientID(id))
	if o.callback != "" {
		msg.Header.Set(calls.HeaderCallback, o.callback)
	}
	ack, err := js.PublishMsg(ctx, msg)
	if err != nil {
		return nil, calls.PublishError(err)
	}
	h := http.Header{"Stream": {ack.Stream}, "Sequence": {fmt.Sprint(ack.Sequence)}}
	if ack.Duplicate {
		h.Set("Duplicate", "true")
	}
	return &submission{id: calls.ClientID(id), duplicate: ack.Duplicate, header: h}, nil
}

// httpRecords reads a call's record at the gateway's GET /calls/ID, with
// the token the call was submitted with.
func httpRecords(gw, id string, authorization []string) recordSource {
	u := strings.TrimSuffix(gw, "/") + "/calls/" + url.PathEscape(id)
	return func(ctx context.Context) (*calls.Record, error) {
		h := http.Header{}
		for _, v := range authorization {
			h.Add("Authorization", v)
		}
		a, err := doHTTP(ctx, http.MethodGet, u, h, nil)
		if err != nil {
			return nil, err
		}
		ierr, _ := invocation.ParseError(a.status, a.body)
		switch {
		case a.status == http.StatusOK:
			var rec calls.Record
			if err := json.Unmarshal(a.body, &rec); err != nil {
				return nil, permanentError{fmt.Errorf("read the record of call %s: %w", id, err)}
			}
			return &rec, nil
		case ierr != nil && ierr.Code == invocation.CodeCallNotFound:
			return nil, nil // not recorded yet
		case ierr != nil:
			err = fmt.Errorf("GET /calls/%s answered %d %s: %s", id, a.status, ierr.Code, ierr.Message)
		default:
			err = fmt.Errorf("GET /calls/%s answered %d %s", id, a.status, http.StatusText(a.status))
		}
		if a.status == http.StatusTooManyRequests || a.status >= 500 && a.status != http.StatusNotImplemented {
			return nil, err
		}
		return nil, permanentError{err}
	}
}

// natsRecords reads a call's record in the calls bucket.
func natsRecords(js jetstream.JetStream, id string) recordSource {
	q := calls.NewQueue(js)
	return func(ctx context.Context) (*calls.Record, error) {
		rec, err := q.Get(ctx, id)
		switch {
		case errors.Is(err, calls.ErrNotFound):
			return nil, nil // no runner has taken it yet
		case errors.Is(err, calls.ErrNotSetUp):
			return nil, permanentError{err}
		}
		return rec, err
	}
}

// followCall reads the call's record until it has ended, telling errOut
// of each change, until ctx ends.
func followCall(ctx context.Context, errOut io.Writer, id string, read recordSource, timeout time.Duration) (*calls.Record, error) {
	var (
		last    *calls.Record
		lastErr error
		shown   string
	)
	delay := pollFirst
	for {
		pctx, cancel := context.WithTimeout(ctx, pollAttempt)
		rec, err := read(pctx)
		cancel()
		switch {
		case errors.As(err, new(permanentError)):
			return nil, fmt.Errorf("follow call %s: %w", id, err)
		case err != nil:
			lastErr = err
		default:
			lastErr, last = nil, rec
			if k := stateKey(rec); k != shown {
				fmt.Fprintf(errOut, "call %s: %s\n", id, describeState(rec, time.Now()))
				shown, delay = k, pollFirst
			}
			if rec != nil && (rec.Status == calls.Succeeded || rec.Status == calls.Failed) {
				return rec, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, unfinished(ctx, id, last, lastErr, timeout)
		case <-time.After(delay):
		}
		delay = min(delay*3/2, pollMax)
	}
}

// stateKey tells the states of a call apart for followCall.
func stateKey(rec *calls.Record) string {
	if rec == nil {
		return string(calls.Queued) + "/0"
	}
	return fmt.Sprintf("%s/%d", rec.Status, rec.Attempts)
}

// describeState says where a call stands, for a person.
func describeState(rec *calls.Record, now time.Time) string {
	switch {
	case rec == nil || rec.Status == calls.Queued && rec.Attempts == 0:
		return "queued"
	case rec.Status == calls.Queued:
		next := "now"
		if d := rec.NextAttemptAt.Sub(now); d > 0 {
			next = "in " + roundDuration(d)
		}
		return fmt.Sprintf("%s failed (%s); retrying %s", attemptText(rec), callError(rec), next)
	}
	return fmt.Sprintf("%s (%s)", rec.Status, attemptText(rec))
}

// attemptText is "attempt 2 of 3" of the record's last attempt.
func attemptText(rec *calls.Record) string {
	if rec.MaxAttempts > 0 {
		return fmt.Sprintf("attempt %d of %d", rec.Attempts, rec.MaxAttempts)
	}
	return fmt.Sprintf("attempt %d", rec.Attempts)
}

// callError describes why the call, or its last attempt, failed.
func callError(rec *calls.Record) string {
	status := 0
	if rec.Response != nil {
		status = rec.Response.Status
	}
	switch {
	case rec.Error != nil && status != 0:
		return fmt.Sprintf("%d %s: %s", status, rec.Error.Code, rec.Error.Message)
	case rec.Error != nil:
		return fmt.Sprintf("%s: %s", rec.Error.Code, rec.Error.Message)
	case status != 0:
		return fmt.Sprintf("%d %s", status, http.StatusText(status))
	}
	return "no error recorded"
}

// unfinished is the error of a call that had not ended when ctx did.
func unfinished(ctx context.Context, id string, last *calls.Record, lastErr error, timeout time.Duration) error {
	state := "queued"
	if last != nil && last.Status != calls.Queued {
		state = fmt.Sprintf("%s (%s)", last.Status, attemptText(last))
	} else if last != nil && last.Attempts > 0 {
		state = fmt.Sprintf("queued for a retry (%s failed)", attemptText(last))
	}
	when := "after " + timeout.String()
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		when = "when interrupted"
	}
	msg := fmt.Sprintf("call %s is still %s %s; the call goes on: check it later with `shoal calls get %s` (or GET /calls/%s on the gateway)",
		id, state, when, id, id)
	if lastErr != nil && !errors.Is(lastErr, context.DeadlineExceeded) && !errors.Is(lastErr, context.Canceled) {
		msg += fmt.Sprintf("; the last reading of its record failed: %v", lastErr)
	}
	return errors.New(msg)
}

// resultSubject is where the result of call id of function name was
// published.
func resultSubject(name, id string) string {
	if strings.HasPrefix(id, calls.ClientIDPrefix) {
		return calls.ClientResultSubject(name)
	}
	return calls.ResultSubject(name)
}

// printOutcome prints the answer of a call that has ended, as invoke
// prints a synchronous one; a failed call is an error naming why.
func printOutcome(out, errOut io.Writer, name string, rec *calls.Record, include bool) error {
	resp := rec.Response
	var a *answer
	if resp != nil {
		a = &answer{status: resp.Status, header: resp.Header, body: resp.Body}
		if a.header == nil {
			a.header = http.Header{}
		}
		if resp.BodyDropped {
			fmt.Fprintf(errOut, "call %s: the answer's body was too large to keep in the call's record; subscribers to %s received it\n",
				rec.ID, resultSubject(name, rec.ID))
		}
	}
	if rec.Status == calls.Succeeded {
		if a == nil {
			return fmt.Errorf("call %s of %s succeeded, but its record holds no answer", rec.ID, name)
		}
		return printAnswer(out, name, a, include)
	}
	if a != nil {
		// As for a synchronous call: the body, unless it is a Shoal
		// error, which the returned error says.
		if include {
			printHead(out, a.status, a.header)
		}
		if _, isErr := invocation.ParseError(a.status, a.body); include || !isErr {
			_, _ = out.Write(a.body)
		}
	}
	return fmt.Errorf("call %s of %s failed (%s): %s; it is dead-lettered: `shoal calls retry %s` re-drives it",
		rec.ID, name, attemptText(rec), callError(rec), rec.ID)
}

// roundDuration rounds d for a person: to the second, or below a second
// to the millisecond.
func roundDuration(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// ago says how long ago t was, briefly: 12s, 5m, 3h, 4d.
func ago(t, now time.Time) string {
	d := max(now.Sub(t), 0)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

// truncate shortens s to at most n characters, on one line.
func truncate(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// retryJS runs fn as broker.Retry does (see the admin commands), except
// that the answers asking again cannot change (no such call, no such
// dead letter, no asynchronous calls set up) end it at once.
func retryJS(ctx context.Context, fn func(context.Context) error) error {
	var final error
	err := broker.Retry(ctx, jsAttempt, func(ctx context.Context) error {
		err := fn(ctx)
		if errors.Is(err, calls.ErrNotFound) || errors.Is(err, calls.ErrNotDeadLettered) || errors.Is(err, calls.ErrNotSetUp) {
			final = err
			return nil
		}
		return err
	})
	if final != nil {
		return final
	}
	return err
}

func newCallsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "calls",
		Short: "Inspect asynchronous calls; re-drive or discard dead-lettered ones",
		Long: `Inspect asynchronous calls (shoal invoke --async, POST /async-function/NAME)
and handle the dead-lettered ones: those that failed their last attempt
(fn.yaml: async.max_deliver) wait in the stream ` + calls.DLQStream + ` until they are
re-driven (retry), discarded, or expire (--async-dlq-max-age).

These commands talk to NATS with the admin role, as shoal rm and shoal
list do: by default with the credentials of shoal up's data directory.`,
		Example: `  shoal calls get 7k2m...           # one call's record
  shoal calls dlq                   # the dead-lettered calls
  shoal calls retry ID1 ID2         # queue them again, attempts counted afresh
  shoal calls discard ID            # drop one for good`,
	}
	cmd.AddCommand(newCallsGetCmd(), newCallsDLQCmd(), newCallsRetryCmd(), newCallsDiscardCmd())
	return cmd
}

func newCallsGetCmd() *cobra.Command {
	var (
		a      adminFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show the record of an asynchronous call: status, attempts, times, error, answer",
		Long: `Show what Shoal knows of an asynchronous call, from the KV bucket ` + calls.Bucket + `:
its function, status (queued, running, succeeded, failed), attempts, times,
error, callback and answer. A record is kept for --async-results-ttl after
its last change. A call submitted over NATS has no record until a runner
takes it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				var rec *calls.Record
				err := retryJS(ctx, func(ctx context.Context) error {
					var err error
					rec, err = calls.NewQueue(js).Get(ctx, id)
					return err
				})
				switch {
				case errors.Is(err, calls.ErrNotFound):
					return fmt.Errorf("no call %s: never submitted, its record has expired, or (submitted over NATS) no runner has taken it yet", id)
				case err != nil:
					return fmt.Errorf("read call %s: %w", id, err)
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(rec)
				}
				return printRecord(cmd.OutOrStdout(), rec, time.Now())
			})
		},
	}
	a.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the record's JSON, as GET /calls/ID does")
	return cmd
}

// printRecord writes a call's record for a person.
func printRecord(out io.Writer, rec *calls.Record, now time.Time) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	line := func(k, format string, args ...any) {
		fmt.Fprintf(tw, "%s:\t"+format+"\n", append([]any{k}, args...)...)
	}
	at := func(t time.Time) string {
		if t.After(now) {
			return fmt.Sprintf("%s (in %s)", t.UTC().Format(time.RFC3339), roundDuration(t.Sub(now)))
		}
		return fmt.Sprintf("%s (%s ago)", t.UTC().Format(time.RFC3339), ago(t, now))
	}
	line("call", "%s", rec.ID)
	line("function", "%s", rec.Function)
	line("status", "%s", rec.Status)
	if rec.MaxAttempts > 0 {
		line("attempts", "%d of %d", rec.Attempts, rec.MaxAttempts)
	} else {
		line("attempts", "%d", rec.Attempts)
	}
	line("submitted", "%s", at(rec.SubmittedAt))
	if !rec.StartedAt.IsZero() {
		line("started", "%s", at(rec.StartedAt))
	}
	if !rec.FinishedAt.IsZero() {
		line("finished", "%s", at(rec.FinishedAt))
	}
	if !rec.NextAttemptAt.IsZero() && rec.Status == calls.Queued {
		line("next attempt", "%s", at(rec.NextAttemptAt))
	}
	if rec.Runner != "" {
		line("runner", "%s", rec.Runner)
	}
	if rec.Error != nil {
		line("error", "%s: %s", rec.Error.Code, rec.Error.Message)
	}
	if r := rec.Response; r != nil {
		size := fmt.Sprintf("%d bytes", len(r.Body))
		if r.BodyDropped {
			size = "body too large to keep"
		}
		line("response", "%d %s, %s", r.Status, http.StatusText(r.Status), size)
	}
	if cb := rec.Callback; cb != nil {
		s := fmt.Sprintf("%s: %s", cb.URL, cb.State)
		if cb.Attempts > 0 {
			s += fmt.Sprintf(" (%d attempt(s))", cb.Attempts)
		}
		if !cb.Delivered.IsZero() {
			s += " " + at(cb.Delivered)
		}
		if cb.LastError != "" {
			s += "; last error: " + cb.LastError
		}
		line("callback", "%s", s)
	}
	return tw.Flush()
}

func newCallsDLQCmd() *cobra.Command {
	var (
		a      adminFlags
		asJSON bool
		limit  int
	)
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "List the dead-lettered calls, oldest first",
		Long: `List the calls that failed their last attempt, oldest first, from the
stream ` + calls.DLQStream + `: id, function, attempts, error and how long ago each
failed. shoal calls retry ID re-drives one; shoal calls discard ID drops it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return fmt.Errorf("--limit %d: want 0 (all) or more", limit)
			}
			return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				var (
					list  []calls.DeadLetter
					total uint64
				)
				err := retryJS(ctx, func(ctx context.Context) error {
					var err error
					if list, err = calls.DeadLetters(ctx, js, limit); err != nil || limit == 0 || len(list) < limit {
						total = uint64(len(list))
						return err
					}
					s, err := js.Stream(ctx, calls.DLQStream)
					if err != nil {
						return fmt.Errorf("read stream %s: %w", calls.DLQStream, err)
					}
					total = s.CachedInfo().State.Msgs
					return nil
				})
				if err != nil {
					return fmt.Errorf("list the dead-lettered calls: %w", err)
				}
				if total > uint64(len(list)) {
					fmt.Fprintf(cmd.ErrOrStderr(), "the oldest %d of %d dead-lettered calls; --limit 0 lists all\n", len(list), total)
				}
				if asJSON {
					if list == nil {
						list = []calls.DeadLetter{}
					}
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(list)
				}
				if len(list) == 0 {
					fmt.Fprintln(cmd.OutOrStdout(), "no dead-lettered calls")
					return nil
				}
				now := time.Now()
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tFUNCTION\tATTEMPTS\tERROR\tFAILED")
				for _, d := range list {
					why := ""
					if d.Error != nil {
						why = truncate(string(d.Error.Code)+": "+d.Error.Message, 60)
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s ago\n", d.ID, d.Function, d.Attempts, why, ago(d.FailedAt, now))
				}
				return tw.Flush()
			})
		},
	}
	a.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().IntVar(&limit, "limit", 100, "list at most this many (0: all)")
	return cmd
}

// deadLetterAction is shoal calls retry or discard: act on each id in
// turn, one line each; a failure names its id and the others go on.
func deadLetterAction(cmd *cobra.Command, a *adminFlags, ids []string, verb string, act func(context.Context, jetstream.JetStream, string) (*calls.DeadLetter, error)) error {
	return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
		var errs []error
		for _, id := range ids {
			var (
				d       *calls.DeadLetter
				partial error
				tries   int
			)
			err := retryJS(ctx, func(ctx context.Context) error {
				tries++
				var err error
				d, err = act(ctx, js, id)
				if d != nil && err != nil {
					partial = err // done, but for a detail it reports
					return nil
				}
				return err
			})
			switch {
			case errors.Is(err, calls.ErrNotSetUp):
				return errors.Join(append(errs, err)...) // so are the other ids
			case errors.Is(err, calls.ErrNotDeadLettered) && tries > 1:
				errs = append(errs, fmt.Errorf("no dead-lettered call %s (an earlier attempt, unanswered, may have done it: shoal calls get %s)", id, id))
				continue
			case errors.Is(err, calls.ErrNotDeadLettered):
				errs = append(errs, fmt.Errorf("no dead-lettered call %s", id))
				continue
			case err != nil:
				errs = append(errs, fmt.Errorf("%s call %s: %w", verb, id, err))
				continue
			}
			why := ""
			if d.Error != nil {
				why = ": " + string(d.Error.Code)
			}
			done := map[string]string{"retry": "requeued", "discard": "discarded"}[verb]
			fmt.Fprintf(cmd.OutOrStdout(), "%-9s %s (%s, failed after %d attempt(s)%s)\n", done, id, d.Function, d.Attempts, why)
			if partial != nil {
				errs = append(errs, partial)
			}
		}
		return errors.Join(errs...)
	})
}

func newCallsRetryCmd() *cobra.Command {
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "retry ID...",
		Short: "Re-drive dead-lettered calls: queued again under the same id, attempts counted afresh",
		Long: `Queue dead-lettered calls again, each under its id, with its request as it
was first submitted and its attempts counted afresh; it leaves the
dead-letter stream, and its record says queued. Its token is checked as of
its first submission. A call that fails again returns to the dead-letter
stream.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return deadLetterAction(cmd, &a, args, "retry", calls.Retry)
		},
	}
	a.register(cmd)
	return cmd
}

func newCallsDiscardCmd() *cobra.Command {
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "discard ID...",
		Short: "Remove dead-lettered calls for good",
		Long: `Remove dead-lettered calls from the dead-letter stream for good. Their
records stay, saying failed, until they expire (--async-results-ttl).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return deadLetterAction(cmd, &a, args, "discard", calls.Discard)
		},
	}
	a.register(cmd)
	return cmd
}
