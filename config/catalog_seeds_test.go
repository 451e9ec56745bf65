package config

import (
	"net/netip"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// seedService is a service an institution's policy names, with a host a
// workstation reaches it by and the catalog service and category that
// must list it.
type seedService struct {
	named    string // as the policy writes it
	host     string
	service  string
	category string
}

// seedServices walks the definitions of social media in the institutions'
// policies (../shared/seeds/): every service they name, by category.
// 000 = CISSS de la Côte-Nord G1-252-005, art. 3 « Médias sociaux »;
// 001 = CIUSSS de l'Estrie – CHUS règlement, « Médias sociaux »;
// 002 = CISSS de la Gaspésie CGA-2017-025, « Médias sociaux »;
// 003 = IUCPQ charter, « Les MS sur Internet incluent notamment ».
// Google Wave and MSN Messenger (000, 003 forums) were discontinued and
// have no host of their own today; « blogues hébergés par des médias
// traditionnels » (003) live under the media's news domains, which stay
// reachable (see seedUnlisted).
var seedServices = []seedService{
	// Networking: 000 « Réseautage », 003 « sites sociaux de réseautage »,
	// 001 « réseaux sociaux », 002.
	{"Facebook", "www.facebook.com", "facebook", "networking"},   // 000, 001, 002, 003
	{"Twitter", "twitter.com", "twitter", "microblogging"},       // 000, 002, 003
	{"MySpace", "www.myspace.com", "myspace", "networking"},      // 000, 003
	{"Digg", "www.digg.com", "digg", "networking"},               // 000, 003
	{"Ning", "ning.com", "ning", "networking"},                   // 000, 003
	{"Friendster", "friendster.com", "friendster", "networking"}, // 000 (« Frienster »), 003
	{"LinkedIn", "www.linkedin.com", "linkedin", "networking"},   // 000, 001, 002, 003
	{"Snapchat", "www.snapchat.com", "snapchat", "networking"},   // 000, 001
	// Sharing: 000 « Partage de vidéos ou de photographies », 001
	// « plateformes de partage multimédia », 003.
	{"Flickr", "www.flickr.com", "flickr", "media-sharing"},          // 000 (« Flicker »), 001, 003
	{"YouTube", "www.youtube.com", "youtube", "media-sharing"},       // 000, 001, 002, 003
	{"iTunes", "podcasts.apple.com", "apple-podcasts", "podcasts"},   // 000, 003
	{"Instagram", "www.instagram.com", "instagram", "media-sharing"}, // 000, 001
	{"Pinterest", "www.pinterest.com", "pinterest", "media-sharing"}, // 000, 001
	{"TikTok", "www.tiktok.com", "tiktok", "media-sharing"},          // 001
	{"Vimeo", "vimeo.com", "vimeo", "media-sharing"},                 // 001
	// Messaging: 001 « services de messagerie », 000 (Messenger under
	// forums), 003 « message texte, texto, SMS ».
	{"Messenger", "www.messenger.com", "messenger", "messaging"},                   // 000, 001
	{"WhatsApp", "web.whatsapp.com", "whatsapp", "messaging"},                      // 001
	{"Telegram", "web.telegram.org", "telegram", "messaging"},                      // 001
	{"WeChat", "web.wechat.com", "wechat", "messaging"},                            // 001
	{"SMS from a computer", "messages.google.com", "google-messages", "messaging"}, // 003
	// Microblogging: 001 « plateformes de microblogage », 003 « micro-blogging ».
	{"X", "x.com", "twitter", "microblogging"},                        // 001
	{"Bluesky", "bsky.app", "bluesky", "microblogging"},               // 001
	{"Tumblr", "www.tumblr.com", "tumblr", "microblogging"},           // 001
	{"Threads", "www.threads.net", "threads", "microblogging"},        // 001
	{"Mastodon", "mastodon.social", "mastodon", "microblogging"},      // 001
	{"Mastodon (Québec)", "mstdn.ca", "mastodon", "microblogging"},    // 001
	{"fediverse (Misskey)", "misskey.io", "misskey", "microblogging"}, // 001 « Mastodon, etc. »
	// Forums: 000, 001, 002, 003 « forums de discussion ».
	{"Reddit", "www.reddit.com", "reddit", "forums"},                  // 001
	{"Google Groups", "groups.google.com", "google-groups", "forums"}, // 000, 001, 003
	{"Yahoo! Groups", "groups.yahoo.com", "yahoo-groups", "forums"},   // 000, 003
	{"Discord", "discord.com", "discord", "messaging"},                // 001
	// Wikis: 001 « encyclopédies collaboratives », « les wikis »; 003.
	{"Wikipedia", "fr.wikipedia.org", "wikipedia", "wikis"},     // 001, 003
	{"wikis (Fandom)", "exemple.fandom.com", "fandom", "wikis"}, // 001 « les wikis »
	// Podcasts: 001 « les balados (podcasts) ».
	{"Apple Podcasts", "podcasts.apple.com", "apple-podcasts", "podcasts"}, // 001
	{"Pocket Casts", "pocketcasts.com", "pocketcasts", "podcasts"},         // 001
	{"Overcast", "overcast.fm", "overcast", "podcasts"},                    // 001
	{"Castbox", "castbox.fm", "castbox", "podcasts"},                       // 001
	{"Podcast Addict", "podcastaddict.com", "podcast-addict", "podcasts"},  // 001
	{"Player FM", "player.fm", "player-fm", "podcasts"},                    // 001
	// Blogs: 000 « Blogues personnels ou corporatifs », 002 « blogues »,
	// 003 « les blogues, personnels ou corporatifs ». One platform per
	// language at least.
	{"Blogger", "exemple.blogspot.com", "blogger", "blogs"},              // 000, 002, 003
	{"Blogger (Canada)", "exemple.blogspot.ca", "blogger", "blogs"},      // 000, 002, 003
	{"WordPress.com", "exemple.wordpress.com", "wordpress-com", "blogs"}, // 000, 002, 003
	{"Medium", "medium.com", "medium", "blogs"},                          // 000, 002, 003
	{"Substack", "exemple.substack.com", "substack", "blogs"},            // 000, 002, 003
	{"Over-blog", "exemple.over-blog.com", "over-blog", "blogs"},         // 000, 002, 003
	{"Canalblog", "exemple.canalblog.com", "canalblog", "blogs"},         // 000, 002, 003
	{"Hautetfort", "exemple.hautetfort.com", "hautetfort", "blogs"},      // 000, 002, 003
	// Comment zones: 000 « Médias Web (zones de commentaires) », 001 « zones
	// de commentaires des médias en ligne (Radio-Canada, TVA, etc.) »: the
	// third-party widgets media embed.
	{"Disqus", "disqus.com", "media-comments", "comments"},                  // 000, 001
	{"Disqus widget", "c.disquscdn.com", "media-comments", "comments"},      // 000, 001
	{"Viafoura", "livecomments.viafoura.co", "media-comments", "comments"},  // 000, 001
	{"OpenWeb (Spot.IM)", "launcher.spot.im", "media-comments", "comments"}, // 000, 001
}

// seedUnlisted are hosts that must stay unlisted: shared infrastructure
// serving unrelated sites, the news itself, and certificate and update
// services.
var seedUnlisted = []string{
	"static.xx.fbcdn.net", "i.ytimg.com", "rr1---sn-tt1e7nes.googlevideo.com",
	"lh3.googleusercontent.com", "blogger.googleusercontent.com", "www.google.com", "www.gstatic.com",
	"i0.wp.com", "s.w.org", "wordpress.org", "videopress.com", "www.yahoo.com", "www.apple.com",
	"a248.e.akamai.net", "cdn.jsdelivr.net", "d1.cloudfront.net", "exemple.wixsite.com",
	"ici.radio-canada.ca", "www.tvanouvelles.ca", "www.journaldemontreal.com", "www.lapresse.ca",
	"www.ledevoir.com", "www.cbc.ca", "www.canoe.ca",
	"ocsp.digicert.com", "crl3.digicert.com", "windowsupdate.microsoft.com", "r3.o.lencr.org",
}

// TestSeedServicesListedByDefault checks that the embedded default
// configuration lists every service the policies name and blocks it
// outside breaks (wikis excepted: the default leaves them open), and opens
// them during a break; shared infrastructure and the news stay unlisted.
func TestSeedServicesListedByDefault(t *testing.T) {
	pol, err := Default().Compile()
	if err != nil {
		t.Fatal(err)
	}
	loc, err := time.LoadLocation("America/Toronto")
	if err != nil {
		t.Fatal(err)
	}
	work := time.Date(2026, 12, 7, 9, 30, 0, 0, loc)   // Monday, outside the breaks
	pause := time.Date(2026, 12, 7, 12, 30, 0, 0, loc) // Monday, lunch
	client := netip.MustParseAddr("10.20.30.40")
	for _, s := range seedServices {
		d := pol.Decide(policy.Query{Host: s.host, Client: client, Time: work})
		if d.Service != s.service || d.Category != s.category {
			t.Errorf("%s: %s is service %q category %q, want %q %q", s.named, s.host, d.Service, d.Category, s.service, s.category)
			continue
		}
		want := policy.Block
		if s.category == "wikis" {
			want = policy.Allow
		}
		if d.Verdict != want {
			t.Errorf("%s: %s outside breaks = %v (reason %v, rule %q), want %v", s.named, s.host, d.Verdict, d.Reason, d.Rule, want)
		}
		if d := pol.Decide(policy.Query{Host: s.host, Client: client, Time: pause}); d.Verdict != policy.Allow {
			t.Errorf("%s: %s during a break = %v, want allow", s.named, s.host, d.Verdict)
		}
	}
	for _, h := range seedUnlisted {
		if d := pol.Decide(policy.Query{Host: h, Client: client, Time: work}); d.Listed() {
			t.Errorf("%s is listed by default (service %q): it must stay unlisted", h, d.Service)
		}
	}
}

// TestSeedCategoriesHaveServices checks that every category of the
// catalog but doh holds services listed by default, and that the only
// optional service is the podcast hosts' (their audio plays inside news
// sites: shared infrastructure).
func TestSeedCategoriesHaveServices(t *testing.T) {
	info := Catalog()
	n := map[string]int{}
	for _, s := range info.Services {
		if s.Optional {
			if s.ID != "podcast-hosting" {
				t.Errorf("service %s is optional: a service the policies name is listed by default", s.ID)
			}
			continue
		}
		if s.Domains == 0 {
			t.Errorf("service %s lists no domain by default", s.ID)
		}
		n[s.Category]++
	}
	for _, c := range info.Categories {
		if n[c] == 0 {
			t.Errorf("category %s has no service listed by default", c)
		}
	}
}
