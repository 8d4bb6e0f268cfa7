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
