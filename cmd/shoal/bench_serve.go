package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/functions/ping"
)

// The reference servers of shoal bench, each run as a process of its own
// (hidden commands): they print one line, "listening URL" or
// "responding SUBJECT", once they serve, and stop on SIGINT or SIGTERM.

// rawSubject is the subject of the raw NATS reference.
const rawSubject = "bench.ping"

// pongBody is what every configuration answers.
var pongBody = []byte("pong!")

func newBenchServeHTTPCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:    "serve-http",
		Short:  "Serve GET -> pong! with plain net/http (the HTTP ceiling of shoal bench)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			srv := &http.Server{Handler: ping.Handler(), ReadHeaderTimeout: 10 * time.Second}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(ln) }()
			fmt.Fprintln(cmd.OutOrStdout(), "listening http://"+ln.Addr().String())
			select {
			case err := <-served:
				return fmt.Errorf("serve: %w", err)
			case <-cmd.Context().Done():
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = srv.Shutdown(ctx)
			<-served
			return err
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "listen address")
	return cmd
}

func newBenchServeNATSCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:    "serve-nats",
		Short:  "Run a plain NATS server: no auth, no JetStream (the raw NATS reference of shoal bench)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			host, portText, err := net.SplitHostPort(listen)
			if err != nil {
				return fmt.Errorf("--listen %q: %w", listen, err)
			}
			port, err := strconv.Atoi(portText)
			if err != nil {
				return fmt.Errorf("--listen %q: bad port", listen)
			}
			if port == 0 {
				port = server.RANDOM_PORT
			}
			srv, err := server.NewServer(&server.Options{Host: host, Port: port, NoSigs: true, NoLog: true, MaxPayload: 1 << 20})
			if err != nil {
				return fmt.Errorf("nats server: %w", err)
			}
			srv.Start()
			defer srv.Shutdown()
			if !srv.ReadyForConnections(10 * time.Second) {
				return errors.New("nats server not ready within 10s")
			}
			fmt.Fprintln(cmd.OutOrStdout(), "listening "+srv.ClientURL())
			<-cmd.Context().Done()
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "listen address (port 0 picks a free one)")
	return cmd
}

func newBenchRespondCmd() *cobra.Command {
	var url, subject string
	cmd := &cobra.Command{
		Use:    "serve-nats-responder",
		Short:  "Answer pong! to every request on a subject, in a queue group (the raw NATS reference of shoal bench)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nc, err := nats.Connect(url, nats.Name("shoal-bench-responder"))
			if err != nil {
				return fmt.Errorf("connect to NATS at %s: %w", url, err)
			}
			defer nc.Close()
			if _, err := nc.QueueSubscribe(subject, "bench", func(m *nats.Msg) {
				_ = m.Respond(pongBody) // a lost answer shows as the caller's timeout
			}); err != nil {
				return fmt.Errorf("subscribe to %s: %w", subject, err)
			}
			if err := nc.Flush(); err != nil {
				return fmt.Errorf("subscribe to %s: %w", subject, err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "responding "+subject)
			<-cmd.Context().Done()
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "nats", "", "NATS server URL")
	cmd.Flags().StringVar(&subject, "subject", rawSubject, "subject to answer")
	return cmd
}
