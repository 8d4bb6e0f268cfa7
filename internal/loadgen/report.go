package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteJSON writes v as one JSON object on one line.
func WriteJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode summary: %w", err)
	}
	if _, err := fmt.Fprintf(w, "%s\n", b); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	return nil
}

// WriteText writes the summary for people.
func (s *SMTPSummary) WriteText(w io.Writer) error {
	mode := "lockstep"
	if s.Pipelining {
		mode = "pipelined"
	}
	fmt.Fprintf(w, "smtp %s: %d sessions, %s, sizes %s\n", s.Addr, s.Concurrency, mode, s.Mix)
	fmt.Fprintf(w, "messages   %d accepted, %d failed, %d bytes, %d connections\n", s.Messages, s.Failed, s.Bytes, s.Connections)
	fmt.Fprintf(w, "seconds    %.3f\n", s.Seconds)
	fmt.Fprintf(w, "msgs/s     %.1f\n", s.MsgsPerSec)
	fmt.Fprintf(w, "latency    p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms (MAIL to the 250 after the dot)\n",
		s.Latency.P50, s.Latency.P90, s.Latency.P99, s.Latency.Max)
	writeCounts(w, "errors    ", s.Errors)
	writeCounts(w, "rcpt errs ", s.RcptErrors)
	if e := s.EndToEnd; e != nil {
		fmt.Fprintf(w, "end to end %.3f s, %.1f msgs/s, %.3f s after sending ended (until readable: %s)\n",
			e.Seconds, e.MsgsPerSec, e.AfterSending, e.Via)
	}
	return nil
}

// WriteText writes the summary for people.
func (s *IMAPSummary) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "imap %s: %d clients, %.3f s, %d ops (%.1f ops/s), %d failed\n",
		s.Addr, s.Concurrency, s.Seconds, s.Ops, s.OpsPerSec, s.Failed)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "operation\tops\tops/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\tfailed\t")
	for _, op := range sortedKeys(s.PerOp) {
		o := s.PerOp[op]
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t\n",
			op, o.Ops, o.OpsPerSec, o.Latency.P50, o.Latency.P90, o.Latency.P99, o.Latency.Max, o.Failed)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	writeCounts(w, "errors", s.Errors)
	return nil
}

// WriteText writes the summary for people.
func (s *FillSummary) WriteText(w io.Writer) error {
	_, err := fmt.Fprintf(w, "imap-fill %s: %d users to %d messages each: appended %d, failed %d, %.3f s, %.1f msgs/s\n",
		s.Addr, s.Users, s.Target, s.Appended, s.Failed, s.Seconds, s.MsgsPerSec)
	writeCounts(w, "errors", s.Errors)
	return err
}

func writeCounts(w io.Writer, label string, m map[string]int64) {
	if len(m) == 0 {
		return
	}
	fmt.Fprintf(w, "%s", label)
	for _, k := range sortedKeys(m) {
		fmt.Fprintf(w, " %s=%d", k, m[k])
	}
	fmt.Fprintln(w)
}
