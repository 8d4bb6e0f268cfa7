package deliver

// SetBeforeCommit makes fn run inside every local-delivery transaction of
// l, after the mailbox insert and before the commit, so that a test can
// fail the delivery or end the worker there. Call it before Run.
func (l *Loop) SetBeforeCommit(fn func(id string) error) { l.beforeCommit = fn }
