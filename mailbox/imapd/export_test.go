package imapd

// FieldCacheValues is how many header field values the server's SEARCH
// cache holds.
func (s *Server) FieldCacheValues() int {
	c := s.fields
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, el := range c.sets {
		n += len(el.Value.(*fieldSet).values)
	}
	return n
}

// SetAuthenticate replaces the password check: a fuzzer that sends a
// thousand inputs a second cannot wait for bcrypt, least of all for the
// default-cost comparison that a wrong user name costs.
func (s *Server) SetAuthenticate(fn func(user, password string) (string, error)) {
	s.authenticate = fn
}
