package mailbox

// SetBatching makes bulk commands work in parts of n messages, and fail
// before the part numbered by fault's argument when fault returns an error.
func (s *Store) SetBatching(n int, fault func(part int) error) {
	s.batch, s.batchFault = n, fault
}
