package policy

// GroupSet is the set of the configuration's groups a client belongs to
// (by network, user or directory group), as Decide sees them, computed
// without allocating; Names lists them when a decision line is written.
// The zero GroupSet is empty.
type GroupSet struct {
	p    *Policy
	mask uint64
}

// Groups returns the groups q's client (and user, with their directory
// groups) belongs to.
func (p *Policy) Groups(q Query) GroupSet {
	if p == nil {
		return GroupSet{}
	}
	return GroupSet{p: p, mask: p.c.clientMask(q.Client.Unmap().WithZone(""), q.User, q.Groups)}
}

// Names returns the group names in definition order (nil when none).
func (g GroupSet) Names() []string {
	if g.p == nil || g.mask == 0 {
		return nil
	}
	var out []string
	for i, name := range g.p.c.groupNames {
		if g.mask&(1<<i) != 0 {
			out = append(out, name)
		}
	}
	return out
}
