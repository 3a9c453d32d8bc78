package invocation

import (
	"strconv"

	"github.com/nats-io/nats.go"
)

// Streamed answers.
//
// A caller that can take an answer in several messages sets [HeaderStream]
// to [StreamAccept] on its request. The runner still answers with one
// reply when it can; it streams only when the function flushes (as an
// http.Flusher) and is still running a moment later, or writes more than
// one message can carry. A streamed answer is a sequence of messages on
// the request's reply subject, each numbered by [HeaderStreamSeq] from 0:
//
//   - the first, [StreamStart], carries what a reply carries (Shoal-Status,
//     the function's headers, X-Request-Id, Traceresponse), [HeaderAck]
//     naming the runner, and the first bytes of the body;
//   - then [StreamData] messages carry more of the body;
//   - the last, [StreamEnd], carries the rest of the body, or, when the
//     invocation failed part way (timeout, panic, crash, shutdown), no
//     body of the answer but an error: the headers of an error reply
//     ([Error.Header]) and its JSON as data. The caller must then present
//     the answer as cut short, never as complete.
//
// Every message but the end is a request: its reply subject is the
// runner's, and the caller acknowledges each with an empty message to it,
// once it has passed the bytes on. A runner has at most [StreamWindow]
// messages unacknowledged; the end may come on top of them after a
// failure. An acknowledgement with [HeaderStream] set to [StreamCancel]
// tells the runner the caller is gone: the invocation is cancelled.
const (
	// HeaderStream is set to StreamAccept on a request, to StreamStart,
	// StreamData or StreamEnd on the messages of a streamed answer, and
	// to StreamCancel on an acknowledgement that cancels it.
	HeaderStream = "Shoal-Stream"
	// HeaderStreamSeq numbers the messages of a streamed answer from 0.
	HeaderStreamSeq = "Shoal-Stream-Seq"

	StreamAccept = "accept"
	StreamStart  = "start"
	StreamData   = "data"
	StreamEnd    = "end"
	StreamCancel = "cancel"
)

// StreamWindow is how many messages of a streamed answer a runner sends
// ahead of the caller's acknowledgements. Two let the runner prepare a
// message while the caller writes the previous one out, and bound what a
// slow caller holds to two messages per answer.
const StreamWindow = 2

// AcceptsStream reports whether a request accepts a streamed answer:
// [HeaderStream] is [StreamAccept], the name in any case.
func AcceptsStream(h nats.Header) bool {
	return headerValue(h, HeaderStream) == StreamAccept
}

// StreamPart is [HeaderStream] of a reply: StreamStart, StreamData or
// StreamEnd on the messages of a streamed answer, "" on a plain reply or
// an ack.
func StreamPart(h nats.Header) string {
	return headerValue(h, HeaderStream)
}

// StreamSeq is the [HeaderStreamSeq] of a streamed answer's message; -1
// if it has none or it is not a number.
func StreamSeq(h nats.Header) int {
	n, err := strconv.Atoi(headerValue(h, HeaderStreamSeq))
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// IsStreamCancel reports whether an acknowledgement of a streamed answer
// cancels it.
func IsStreamCancel(h nats.Header) bool {
	return headerValue(h, HeaderStream) == StreamCancel
}

// IsNoResponders reports whether msg is the NATS server's answer to a
// request that no subscriber took (an empty message with Status 503): to
// an invocation, no runner serves the function; to a streamed answer's
// message, its caller is gone.
func IsNoResponders(msg *nats.Msg) bool {
	return len(msg.Data) == 0 && msg.Header.Get("Status") == "503"
}
