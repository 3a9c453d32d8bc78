package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/invocation"
)

type invokeOptions struct {
	data    string
	method  string
	headers []string
	path    string
	gateway string
	nats    natsFlags
	timeout time.Duration
	include bool
	token   string
	// Asynchronous calls (--async): see calls.go.
	async          bool
	wait           bool
	idempotencyKey string
	callback       string
}

func newInvokeCmd() *cobra.Command {
	var o invokeOptions
	cmd := &cobra.Command{
		Use:   "invoke NAME",
		Short: "Call a function and print its answer",
		Long: `Call a function through the HTTP gateway (default) or directly over NATS
(--nats or --nats-context) and print the answer's body. The exit status is
0 for an answer below 400, else 1, with the error on stderr. --token (or
$SHOAL_TOKEN) sends a bearer token for functions that are not public.

--async submits an asynchronous call instead (POST /async-function/NAME on
the gateway, or a JetStream publish on calls.NAME over NATS) and prints its
id. --idempotency-key makes a resubmission return the first call's id
instead of queueing another; --callback asks for the result to be POSTed
to a URL. With --wait, invoke follows the call to its end (state changes
on stderr) and prints its answer as a synchronous call would: exit status
0 if it succeeded, 1 if it failed or is still unfinished after --timeout.`,
		Example: `  shoal invoke ping
  export SHOAL_TOKEN=$(shoal token --sub me --perm echo)
  shoal invoke echo -d 'hello' --path /a/b?x=1 -H 'X-Trace: 1'
  shoal invoke echo -d @payload.json --nats-context shoal
  shoal invoke --async echo -d 'later' --idempotency-key order-42
  shoal invoke --async --wait --timeout 10m echo -d @job.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			viaNATS := cmd.Flags().Changed("nats") || cmd.Flags().Changed("nats-context")
			switch {
			case !viaNATS:
				o.nats.url = "" // through the gateway
			case cmd.Flags().Changed("gateway"):
				return errors.New("use either --gateway or --nats, not both")
			}
			if !o.async {
				for _, f := range []string{"wait", "idempotency-key", "callback"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("--%s goes with --async", f)
					}
				}
			}
			if o.token == "" {
				o.token = os.Getenv("SHOAL_TOKEN")
			}
			if o.token != "" {
				o.headers = append(o.headers, "Authorization: Bearer "+o.token)
			}
			return invoke(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), cmd.InOrStdin(), args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.data, "data", "d", "", "request body; @FILE reads a file, @- standard input")
	f.StringVarP(&o.method, "request", "X", "", "HTTP method (default GET, or POST with a body)")
	f.StringArrayVarP(&o.headers, "header", "H", nil, "request header 'Name: value' (repeatable)")
	f.StringVar(&o.path, "path", "", "sub-path and query below the function, e.g. /a/b?x=1")
	f.StringVar(&o.gateway, "gateway", "http://"+defaultHTTPAddr, "gateway URL")
	o.nats.register(f)
	f.DurationVar(&o.timeout, "timeout", time.Minute, "how long to wait for the answer (with --async --wait: for the call to end)")
	f.BoolVarP(&o.include, "include", "i", false, "print the status and headers before the body")
	f.StringVar(&o.token, "token", "", "bearer token to send (default $SHOAL_TOKEN)")
	f.BoolVar(&o.async, "async", false, "submit an asynchronous call and print its id")
	f.BoolVar(&o.wait, "wait", false, "with --async: follow the call to its end and print its answer")
	f.StringVar(&o.idempotencyKey, "idempotency-key", "", "with --async: a resubmission with the same key returns the first call's id, queueing nothing")
	f.StringVar(&o.callback, "callback", "", "with --async: URL the call's result is POSTed to")
	return cmd
}

// answer is a function's answer, however it travelled.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// request is an invocation as the command line describes it.
type request struct {
	method, path, query string
	header              http.Header
	body                []byte
}

func invoke(ctx context.Context, out, errOut io.Writer, stdin io.Reader, name string, o invokeOptions) error {
	body, err := readData(o.data, stdin)
	if err != nil {
		return err
	}
	method := o.method
	if method == "" {
		method = http.MethodGet
		if o.data != "" {
			method = http.MethodPost
		}
	}
	header := http.Header{}
	for _, h := range o.headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("-H %q: want 'Name: value'", h)
		}
		header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	path, query, _ := strings.Cut(o.path, "?")
	if path != "" && !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	req := request{method: method, path: path, query: query, header: header, body: body}
	if o.async {
		return invokeAsync(ctx, out, errOut, name, req, o)
	}

	var a *answer
	if o.nats.url != "" {
		a, err = invokeNATS(ctx, name, req, &o.nats)
	} else {
		a, err = invokeHTTP(ctx, name, req, o.gateway)
	}
	if err != nil {
		return fmt.Errorf("invoke %s: %w", name, err)
	}
	return printAnswer(out, name, a, o.include)
}

// printHead writes a status line and the headers, sorted, then a blank
// line, as curl -i does.
func printHead(out io.Writer, status int, header http.Header) {
	fmt.Fprintf(out, "%d %s\n", status, http.StatusText(status))
	keys := make([]string, 0, len(header))
	for k := range header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range header[k] {
			fmt.Fprintf(out, "%s: %s\n", k, v)
		}
	}
	fmt.Fprintln(out)
}

// printAnswer writes a function's answer: with include, its status and
// headers first; then its body, except for a Shoal error without
// include, which becomes the returned error, as does any status of 400
// or more.
func printAnswer(out io.Writer, name string, a *answer, include bool) error {
	if include {
		printHead(out, a.status, a.header)
	}
	if a.status >= 400 {
		if ierr, ok := invocation.ParseError(a.status, a.body); ok && !include {
			return fmt.Errorf("%s answered %d %s: %s", name, a.status, ierr.Code, ierr.Message)
		}
		_, _ = out.Write(a.body)
		return fmt.Errorf("%s answered %d %s", name, a.status, http.StatusText(a.status))
	}
	_, err := out.Write(a.body)
	return err
}

func readData(data string, stdin io.Reader) ([]byte, error) {
	switch {
	case data == "@-":
		return io.ReadAll(stdin)
	case strings.HasPrefix(data, "@"):
		b, err := os.ReadFile(data[1:])
		if err != nil {
			return nil, fmt.Errorf("read body: %w", err)
		}
		return b, nil
	}
	return []byte(data), nil
}

func invokeHTTP(ctx context.Context, name string, r request, gw string) (*answer, error) {
	u, err := functionURL(gw, "/function/", name, r)
	if err != nil {
		return nil, err
	}
	return doHTTP(ctx, r.method, u, r.header, r.body)
}

// functionURL is the gateway URL of function name under prefix
// (/function/ or /async-function/), with r's sub-path and query.
func functionURL(gw, prefix, name string, r request) (string, error) {
	u, err := url.Parse(strings.TrimSuffix(gw, "/") + prefix + url.PathEscape(name) + r.path)
	if err != nil {
		return "", fmt.Errorf("gateway URL: %w", err)
	}
	u.RawQuery = r.query
	return u.String(), nil
}

// doHTTP sends one request and reads the whole answer.
func doHTTP(ctx context.Context, method, u string, header http.Header, body []byte) (*answer, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = header
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	return &answer{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// requestMsg is the NATS message of an invocation, on subject.
func requestMsg(subject string, r request) *nats.Msg {
	msg := nats.NewMsg(subject)
	for k, v := range r.header {
		msg.Header[k] = v
	}
	msg.Header.Set(invocation.HeaderMethod, r.method)
	if r.path != "" {
		msg.Header.Set(invocation.HeaderPath, r.path)
	}
	if r.query != "" {
		msg.Header.Set(invocation.HeaderQuery, r.query)
	}
	msg.Data = r.body
	return msg
}

func invokeNATS(ctx context.Context, name string, r request, nf *natsFlags) (*answer, error) {
	nc, err := nf.connect("shoal-invoke")
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	msg := requestMsg(invocation.Subject(name), r)
	reply, err := nc.RequestMsgWithContext(ctx, msg)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, fmt.Errorf("no runner is serving %s on this NATS (no responders on %s)", name, msg.Subject)
	case err != nil:
		return nil, err
	}
	h := http.Header{}
	status, err := invocation.ReadReply(h, reply.Header)
	if err != nil {
		return nil, err
	}
	return &answer{status: status, header: h, body: reply.Data}, nil
}
