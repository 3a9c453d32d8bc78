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
}

func newInvokeCmd() *cobra.Command {
	var o invokeOptions
	cmd := &cobra.Command{
		Use:   "invoke NAME",
		Short: "Call a function and print its answer",
		Long: `Call a function through the HTTP gateway (default) or directly over NATS
(--nats or --nats-context) and print the answer's body. The exit status is
0 for an answer below 400, else 1, with the error on stderr. --token (or
$SHOAL_TOKEN) sends a bearer token for functions that are not public.`,
		Example: `  shoal invoke ping
  export SHOAL_TOKEN=$(shoal token --sub me --perm echo)
  shoal invoke echo -d 'hello' --path /a/b?x=1 -H 'X-Trace: 1'
  shoal invoke echo -d @payload.json --nats-context shoal`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			viaNATS := cmd.Flags().Changed("nats") || cmd.Flags().Changed("nats-context")
			switch {
			case !viaNATS:
				o.nats.url = "" // through the gateway
			case cmd.Flags().Changed("gateway"):
				return errors.New("use either --gateway or --nats, not both")
			}
			if o.token == "" {
				o.token = os.Getenv("SHOAL_TOKEN")
			}
			if o.token != "" {
				o.headers = append(o.headers, "Authorization: Bearer "+o.token)
			}
			return invoke(cmd.Context(), cmd.OutOrStdout(), cmd.InOrStdin(), args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.data, "data", "d", "", "request body; @FILE reads a file, @- standard input")
	f.StringVarP(&o.method, "request", "X", "", "HTTP method (default GET, or POST with a body)")
	f.StringArrayVarP(&o.headers, "header", "H", nil, "request header 'Name: value' (repeatable)")
	f.StringVar(&o.path, "path", "", "sub-path and query below the function, e.g. /a/b?x=1")
	f.StringVar(&o.gateway, "gateway", "http://"+defaultHTTPAddr, "gateway URL")
	o.nats.register(f)
	f.DurationVar(&o.timeout, "timeout", time.Minute, "how long to wait for the answer")
	f.BoolVarP(&o.include, "include", "i", false, "print the status and headers before the body")
	f.StringVar(&o.token, "token", "", "bearer token to send (default $SHOAL_TOKEN)")
	return cmd
}

// answer is a function's answer, however it travelled.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func invoke(ctx context.Context, out io.Writer, stdin io.Reader, name string, o invokeOptions) error {
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

	var a *answer
	if o.nats.url != "" {
		a, err = invokeNATS(ctx, name, method, path, query, header, body, &o.nats)
	} else {
		a, err = invokeHTTP(ctx, name, method, path, query, header, body, o.gateway)
	}
	if err != nil {
		return fmt.Errorf("invoke %s: %w", name, err)
	}
	if o.include {
		fmt.Fprintf(out, "%d %s\n", a.status, http.StatusText(a.status))
		keys := make([]string, 0, len(a.header))
		for k := range a.header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			for _, v := range a.header[k] {
				fmt.Fprintf(out, "%s: %s\n", k, v)
			}
		}
		fmt.Fprintln(out)
	}
	if a.status >= 400 {
		if ierr, ok := invocation.ParseError(a.status, a.body); ok && !o.include {
			return fmt.Errorf("%s answered %d %s: %s", name, a.status, ierr.Code, ierr.Message)
		}
		_, _ = out.Write(a.body)
		return fmt.Errorf("%s answered %d %s", name, a.status, http.StatusText(a.status))
	}
	_, err = out.Write(a.body)
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

func invokeHTTP(ctx context.Context, name, method, path, query string, header http.Header, body []byte, gw string) (*answer, error) {
	u, err := url.Parse(strings.TrimSuffix(gw, "/") + "/function/" + url.PathEscape(name) + path)
	if err != nil {
		return nil, fmt.Errorf("gateway URL: %w", err)
	}
	u.RawQuery = query
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
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

func invokeNATS(ctx context.Context, name, method, path, query string, header http.Header, body []byte, nf *natsFlags) (*answer, error) {
	nc, err := nf.connect("shoal-invoke")
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	msg := nats.NewMsg(invocation.Subject(name))
	for k, v := range header {
		msg.Header[k] = v
	}
	msg.Header.Set(invocation.HeaderMethod, method)
	if path != "" {
		msg.Header.Set(invocation.HeaderPath, path)
	}
	if query != "" {
		msg.Header.Set(invocation.HeaderQuery, query)
	}
	msg.Data = body
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
