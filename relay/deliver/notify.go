package deliver

import (
	"bytes"
	"slices"
	"strings"
	"time"

	"github.com/relaymail/relay/relay/dsn"
	"github.com/relaymail/relay/spool"
)

// wants reports whether a recipient's NOTIFY asks for kind (SUCCESS,
// FAILURE or DELAY). Without NOTIFY the default is FAILURE and DELAY, as
// Postfix and most MTAs have it (RFC 3461 §4.1 leaves DELAY to the MTA).
func wants(rc spool.Recipient, kind string) bool {
	if len(rc.Notify) == 0 {
		return kind != "SUCCESS"
	}
	return slices.ContainsFunc(rc.Notify, func(n string) bool { return strings.EqualFold(n, kind) })
}

// notices builds the delivery status notifications that reports call for,
// to be queued with the update that records the outcomes: one message per
// kind (failed, delayed, delivered). It never writes to the null sender, so
// bounces cannot loop. The original is read for the notice's copy of it
// (the whole message or its header); a notice that cannot be built is
// logged and left out, never holding up the outcome.
func (l *Loop) notices(m *spool.Message, reports []report, now time.Time) []spool.Notice {
	if len(reports) == 0 {
		return nil
	}
	if m.From == "" {
		l.log.Info("no notice", "id", m.ID, "reason", "null sender")
		return nil
	}
	groups := map[dsn.Action][]dsn.Recipient{}
	for _, rep := range reports {
		rc := m.Rcpts[rep.i]
		r := dsn.Recipient{Address: rc.Address, ORcpt: rc.ORcpt, Reply: rc.Reply, RemoteMTA: rc.RemoteMTA, LastAttempt: now}
		switch {
		case rc.State == spool.Failed:
			if !wants(rc, "FAILURE") {
				continue
			}
			r.Action, r.Expired = dsn.Failed, rep.expired
		case rc.State == spool.Delivered && l.IsLocal(rc.Address):
			r.Action = dsn.Delivered
		case rc.State == spool.Delivered:
			r.Action = dsn.Relayed
		default:
			r.Action = dsn.Delayed
			r.WillRetryUntil = m.Arrived.Add(l.cfg.Lifetime)
		}
		kind := r.Action
		if kind == dsn.Relayed {
			kind = dsn.Delivered
		}
		groups[kind] = append(groups[kind], r)
	}
	var out []spool.Notice
	for _, kind := range []dsn.Action{dsn.Failed, dsn.Delayed, dsn.Delivered} {
		rs := groups[kind]
		if len(rs) == 0 {
			continue
		}
		ret := m.Params.Ret
		if kind != dsn.Failed {
			// Only a failure gives the message back; the others just
			// report on it.
			ret = "HDRS"
		}
		noticeID := l.spool.NewID()
		rep := &dsn.Report{
			ReportingMTA: l.cfg.Hostname, To: m.From, QueueID: m.ID, NoticeID: noticeID, EnvID: m.Params.EnvID,
			Arrived: m.Arrived, Recipients: rs, Ret: ret, UTF8: m.Params.SMTPUTF8, Now: now,
		}
		body, err := l.spool.Body(m.ID)
		if err != nil {
			l.log.Error("read original for a notice", "id", m.ID, "error", err)
			continue
		}
		var buf bytes.Buffer
		err = dsn.Build(&buf, rep, body)
		body.Close()
		if err != nil {
			l.log.Error("build notice", "id", m.ID, "error", err)
			continue
		}
		notice, err := l.spool.Notice(&spool.Message{
			ID:      noticeID,
			Arrived: now,
			From:    "",
			Params:  spool.MailParams{SMTPUTF8: m.Params.SMTPUTF8},
			Rcpts:   []spool.Recipient{{Address: m.From, Notify: []string{"NEVER"}}},
		}, buf.Bytes())
		if err != nil {
			l.log.Error("queue notice", "id", m.ID, "error", err)
			continue
		}
		out = append(out, notice)
		l.log.Info("notice queued", "id", noticeID, "about", m.ID, "action", string(kind), "to", m.From)
	}
	return out
}
