// SPDX-License-Identifier: GPL-2.0
/* crossnet's tc eBPF host routing (datapath: ebpf), see docs/ebpf.md.
 *
 * Two classifier programs (direct action), one object, maps shared:
 *   cn_from_container  tc ingress of a container's host-side veth (packets FROM the
 *                      container): FIB lookup, then the FIB's MACs and bpf_redirect to the
 *                      egress device (underlay NIC, vxlan device), bpf_redirect_peer into a
 *                      local container, or bpf_redirect_neigh while the next hop is unresolved.
 *                      Routed into the vxlan device towards a peer whose VTEP crossnet put in
 *                      cn_vteps: the program encapsulates it itself (the VXLAN header the
 *                      device would write) and hands it to the underlay NIC.
 *   cn_to_container    tc ingress of the underlay NIC and of the vxlan device (packets
 *                      TOWARDS a local container): FIB lookup, then bpf_redirect_peer into the
 *                      container, only when the FIB target is a veth crossnet attached. On the
 *                      NIC a VXLAN packet of one of the host's networks for such a container
 *                      is decapsulated first (what the vxlan device would do).
 * Anything else returns TC_ACT_OK: the kernel's stack handles it exactly as without
 * the programs (ARP, non-IPv4, IP options/fragments, TTL <= 1, destinations outside
 * the container network (masquerade), local delivery, unresolved neighbours, ...).
 * Configuration is in maps filled by crossnet (crossnet.ebpf.host), never compiled in.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

/* keep in sync with crossnet/ebpf/maps.py (CONFIG_FORMAT, COUNTERS, MAX_NETWORKS) */
#define CN_MAX_NETS 72 /* the top-level network + 64 named networks (docs/networks.md) */

/* one entry per container network of the host (key 0: the top-level one, then the
 * named networks; the first entry with mask 0 ends the list) */
struct cn_config {
	__u32 net;      /* container network address, network byte order */
	__u32 mask;     /* its netmask, network byte order (0: not configured, pass all) */
	__u32 underlay; /* ifindex of the underlay NIC */
	__u32 vxlan;    /* ifindex of the vxlan device, 0 if none */
	__u32 vni;      /* the vxlan device's VNI (host byte order) */
	__u32 local;    /* the vxlan device's local (underlay) address, network byte order */
	__u16 port;     /* the vxlan device's UDP port, network byte order (0: no encapsulation here) */
	__u16 pad;
};

/* peers' VTEPs on a vxlan device: key (device ifindex, the next hop the FIB picks for the
 * peer's subnet: its .0 address, network order), value the peer's underlay address
 * (network order) -- the static neighbour + FDB entry pair crossnet writes for the device */
struct cn_vtep_key {
	__u32 vxlan;
	__u32 nexthop;
};

struct vxlanhdr_cn {
	__u32 flags;
	__u32 vni;
};

#define VXLAN_FLAG_VNI 0x08000000 /* the I flag, host order */
/* outer IPv4 + UDP + VXLAN + inner Ethernet: what the vxlan device puts before the inner IP header */
#define VXLAN_ENCAP_LEN (sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(struct vxlanhdr_cn) + \
			 sizeof(struct ethhdr))
#define IP_MAXLEN 0xFFFF

enum {
	CN_REDIRECT_NEIGH = 0,
	CN_REDIRECT_PEER,
	CN_PASS_NOT_IPV4,
	CN_PASS_NOT_HOST,
	CN_PASS_OUTSIDE,
	CN_PASS_IP_OPTIONS,
	CN_PASS_TTL,
	CN_PASS_FIB,
	CN_PASS_TARGET,
	CN_PASS_MALFORMED,
	CN_PASS_SOURCE,
	CN_REDIRECT_ENCAP,
	CN_REDIRECT_DECAP,
	CN_NCOUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CN_MAX_NETS);
	__type(key, __u32);
	__type(value, struct cn_config);
} cn_config SEC(".maps");

/* host-side veths of crossnet's containers (key: ifindex; value: the container's
 * address, network byte order): the only targets of bpf_redirect_peer and, with the
 * underlay/vxlan ifindexes, of bpf_redirect_neigh; and the only source address the
 * from-container program forwards from that veth (anything else takes the stack) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} cn_veths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct cn_vtep_key);
	__type(value, __u32);
} cn_vteps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CN_NCOUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} cn_stats SEC(".maps");

static __always_inline int count(__u32 idx, int verdict)
{
	__u64 *v = bpf_map_lookup_elem(&cn_stats, &idx);

	if (v)
		*v += 1;
	return verdict;
}

/* ifindex is the host veth of the container whose address is daddr: the only redirect
 * target among the veths (its container is in daddr's network, hence the source's) */
static __always_inline int veth_of(__u32 ifindex, __u32 daddr)
{
	__u32 *addr = bpf_map_lookup_elem(&cn_veths, &ifindex);

	return addr && *addr == daddr;
}

/* the container network holding daddr (NULL: none). Networks are isolated from each
 * other (docs/networks.md): a packet takes the fast path only when its source is in the
 * same network; anything across networks goes to the stack, where nftables drops it. */
static __always_inline struct cn_config *network_of(__u32 daddr)
{
	for (__u32 i = 0; i < CN_MAX_NETS; i++) {
		__u32 key = i;
		struct cn_config *cfg = bpf_map_lookup_elem(&cn_config, &key);

		if (!cfg || !cfg->mask)
			return NULL;
		if ((daddr & cfg->mask) == cfg->net)
			return cfg;
	}
	return NULL;
}

/* Common checks and the FIB lookup of the packet whose Ethernet header is at offset off
 * (0; or VXLAN_ENCAP_LEN: the inner packet of a VXLAN frame, looked up as if it arrived on
 * its network's vxlan device). Returns -1 and sets *verdict when the packet goes
 * to the stack; else the lookup's result with fib filled: BPF_FIB_LKUP_RET_SUCCESS
 * (next hop and its MAC known), or BPF_FIB_LKUP_RET_NO_NEIGH when no_neigh_ok (next hop
 * known, its MAC not resolved yet). */
static __always_inline int route(struct __sk_buff *skb, struct bpf_fib_lookup *fib,
				 struct cn_config **cfgp, int *verdict, int no_neigh_ok, const __u32 off)
{
	struct cn_config *cfg;
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *iph;
	__u32 in;
	long rc;

	*verdict = TC_ACT_OK;
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return count(CN_PASS_NOT_IPV4, -1);
	if (skb->pkt_type != PACKET_HOST)
		return count(CN_PASS_NOT_HOST, -1);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + off + sizeof(*eth) + sizeof(*iph) > data_end) {
		if (bpf_skb_pull_data(skb, off + sizeof(*eth) + sizeof(*iph)))
			return count(CN_PASS_MALFORMED, -1);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (data + off + sizeof(*eth) + sizeof(*iph) > data_end)
			return count(CN_PASS_MALFORMED, -1);
	}
	eth = data + off;
	iph = data + off + sizeof(*eth);
	if (eth->h_proto != bpf_htons(ETH_P_IP) || iph->version != 4)
		return count(CN_PASS_NOT_IPV4, -1);
	cfg = network_of(iph->daddr);
	if (!cfg || (iph->saddr & cfg->mask) != cfg->net)
		return count(CN_PASS_OUTSIDE, -1);
	if (iph->ihl != 5 || (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return count(CN_PASS_IP_OPTIONS, -1);
	if (iph->ttl <= 1)
		return count(CN_PASS_TTL, -1);
	in = off ? cfg->vxlan : skb->ingress_ifindex;
	if (!in)
		return count(CN_PASS_TARGET, -1);

	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->tos = iph->tos;
	fib->l4_protocol = iph->protocol;
	fib->tot_len = 0; /* no MTU check: 64 KB GSO packets would get FRAG_NEEDED */
	fib->ipv4_src = iph->saddr;
	fib->ipv4_dst = iph->daddr;
	fib->ifindex = in;
	rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && !(no_neigh_ok && rc == BPF_FIB_LKUP_RET_NO_NEIGH))
		return count(CN_PASS_FIB, -1);
	if (fib->ifindex == in)
		return count(CN_PASS_TARGET, -1);
	*cfgp = cfg;
	return rc;
}

/* the Ethernet header the FIB resolved (next hop's MAC, the egress device's own) */
static __always_inline int set_macs(struct __sk_buff *skb, const struct bpf_fib_lookup *fib)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	return 0;
}

/* what the kernel's forwarder does (ip_decrease_ttl) */
static __always_inline int decrease_ttl(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *iph = data + sizeof(struct ethhdr);
	__u32 check;

	if ((void *)(iph + 1) > data_end)
		return -1;
	check = iph->check;
	check += bpf_htons(0x0100);
	iph->check = (__u16)(check + (check >= 0xFFFF));
	iph->ttl--;
	return 0;
}

/* Routed into the vxlan device (FIB: SUCCESS, its MACs already written as the inner
 * Ethernet header, TTL decreased): encapsulate here as the device would (outer IPv4 from
 * its local address, UDP to its port, source port from the flow hash, no UDP checksum,
 * the VXLAN header with its VNI) and hand the frame to the underlay NIC. -1 when the
 * packet is left as it is for the device (no VTEP entry for the next hop, the underlay
 * next hop not resolved or not through the NIC, too long for one outer IPv4 packet);
 * else the verdict. */
static __always_inline int encap(struct __sk_buff *skb, const struct bpf_fib_lookup *inner,
				 const struct cn_config *cfg)
{
	struct cn_vtep_key key = { .vxlan = cfg->vxlan, .nexthop = inner->ipv4_dst };
	struct bpf_fib_lookup fib;
	struct vxlanhdr_cn *vx;
	struct ethhdr *eth, *ieth;
	struct iphdr *o, *iph;
	struct udphdr *udp;
	void *data, *data_end;
	__u32 *remote, len, hash, csum = 0;
	__u16 *words;
	__u8 ecn;

	if (!cfg->port || !cfg->local)
		return -1;
	remote = bpf_map_lookup_elem(&cn_vteps, &key);
	if (!remote)
		return -1;
	if (skb->len - sizeof(struct ethhdr) + VXLAN_ENCAP_LEN > IP_MAXLEN)
		return -1;
	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_UDP;
	fib.ipv4_src = cfg->local;
	fib.ipv4_dst = *remote;
	fib.ifindex = cfg->underlay;
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT) != BPF_FIB_LKUP_RET_SUCCESS ||
	    fib.ifindex != cfg->underlay)
		return -1;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	iph = data + sizeof(struct ethhdr);
	if ((void *)(iph + 1) > data_end)
		return -1;
	ecn = iph->tos & 3;
	if (ecn == 3) /* CE: the outer header says ECT(0), as ip_tunnel_ecn_encap */
		ecn = 2;
	hash = bpf_get_hash_recalc(skb);
	if (bpf_skb_adjust_room(skb, VXLAN_ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
				BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
				BPF_F_ADJ_ROOM_ENCAP_L2(sizeof(struct ethhdr))))
		return -1;
	/* from here on the packet is changed: never back to the caller */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	o = data + sizeof(*eth);
	udp = (void *)(o + 1);
	vx = (void *)(udp + 1);
	ieth = (void *)(vx + 1);
	if ((void *)(ieth + 1) > data_end)
		return count(CN_PASS_MALFORMED, TC_ACT_SHOT);
	len = skb->len - sizeof(*eth);
	__builtin_memcpy(ieth->h_dest, inner->dmac, ETH_ALEN);
	__builtin_memcpy(ieth->h_source, inner->smac, ETH_ALEN);
	ieth->h_proto = bpf_htons(ETH_P_IP);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	o->version = 4;
	o->ihl = 5;
	o->tos = ecn;
	o->tot_len = bpf_htons(len);
	o->id = bpf_htons(bpf_get_prandom_u32() & 0xFFFF);
	o->frag_off = 0;
	o->ttl = 64;
	o->protocol = IPPROTO_UDP;
	o->check = 0;
	o->saddr = cfg->local;
	o->daddr = *remote;
	words = (__u16 *)o;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*o) / 2); i++)
		csum += words[i];
	csum = (csum & 0xFFFF) + (csum >> 16);
	csum = (csum & 0xFFFF) + (csum >> 16);
	o->check = (__u16)~csum;
	/* the kernel's udp_flow_src_port over the default local port range 32768-60999 */
	udp->source = bpf_htons((__u16)((((__u64)hash * (61000 - 32768)) >> 32) + 32768));
	udp->dest = cfg->port;
	udp->len = bpf_htons(len - sizeof(*o));
	udp->check = 0;
	vx->flags = bpf_htonl(VXLAN_FLAG_VNI);
	vx->vni = bpf_htonl(cfg->vni << 8);
	count(CN_REDIRECT_ENCAP, 0);
	return bpf_redirect(cfg->underlay, 0);
}

/* On the underlay NIC: a VXLAN frame of one of this host's networks (to its vxlan
 * device's local address and port, with its VNI) whose inner packet the checks of route()
 * send to a local container: decapsulated here as the device would, then straight into
 * the container. -1 when the frame is not such VXLAN (the caller goes on); otherwise the
 * verdict (TC_ACT_OK: the stack and the vxlan device take it, unchanged). */
static __always_inline int decap(struct __sk_buff *skb)
{
	const __u32 inner_ip = VXLAN_ENCAP_LEN + sizeof(struct ethhdr);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct bpf_fib_lookup fib;
	struct cn_config *cfg = NULL;
	struct vxlanhdr_cn *vx;
	struct ethhdr *eth;
	struct udphdr *udp;
	struct iphdr *o, *iph;
	long level;
	int verdict;

	if (skb->protocol != bpf_htons(ETH_P_IP) || skb->len < sizeof(struct ethhdr) + VXLAN_ENCAP_LEN + sizeof(*iph))
		return -1;
	if (data + inner_ip + sizeof(*iph) > data_end) {
		if (bpf_skb_pull_data(skb, inner_ip + sizeof(*iph)))
			return -1;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (data + inner_ip + sizeof(*iph) > data_end)
			return -1;
	}
	eth = data;
	o = data + sizeof(*eth);
	udp = (void *)(o + 1);
	vx = (void *)(udp + 1);
	iph = data + inner_ip;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || o->version != 4 || o->ihl != 5 || o->protocol != IPPROTO_UDP ||
	    (o->frag_off & bpf_htons(IP_MF | IP_OFFSET)) || !(vx->flags & bpf_htonl(VXLAN_FLAG_VNI)))
		return -1;
	cfg = network_of(iph->daddr);
	if (!cfg || !cfg->vxlan || !cfg->port || udp->dest != cfg->port || o->daddr != cfg->local ||
	    vx->vni != bpf_htonl(cfg->vni << 8))
		return -1;
	/* VXLAN of this host: the inner packet meets the same checks as the device's output */
	if (route(skb, &fib, &cfg, &verdict, 0, VXLAN_ENCAP_LEN) < 0 || !cfg)
		return verdict;
	data = (void *)(long)skb->data; /* route() may have pulled: the pointers again (its checks hold) */
	data_end = (void *)(long)skb->data_end;
	iph = data + inner_ip;
	if ((void *)(iph + 1) > data_end)
		return count(CN_PASS_MALFORMED, TC_ACT_OK);
	if (!veth_of(fib.ifindex, iph->daddr))
		return count(CN_PASS_TARGET, TC_ACT_OK);
	if (bpf_skb_adjust_room(skb, -(__s32)VXLAN_ENCAP_LEN, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO))
		return count(CN_PASS_MALFORMED, TC_ACT_OK);
	/* a checksum the NIC checked was the outer one: one level less, or none */
	level = bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY);
	if (level > 0)
		bpf_csum_level(skb, BPF_CSUM_LEVEL_DEC);
	else if (level == 0)
		bpf_csum_level(skb, BPF_CSUM_LEVEL_RESET);
	if (decrease_ttl(skb) < 0 || set_macs(skb, &fib) < 0)
		return count(CN_PASS_MALFORMED, TC_ACT_SHOT);
	count(CN_REDIRECT_DECAP, 0);
	return bpf_redirect_peer(fib.ifindex, 0);
}

SEC("tc")
int cn_from_container(struct __sk_buff *skb)
{
	struct bpf_fib_lookup fib;
	struct cn_config *cfg = NULL;
	struct bpf_redir_neigh nh = {};
	__u32 in = skb->ingress_ifindex;
	__u32 *source;
	struct iphdr *iph;
	int local;
	int verdict, rc;

	rc = route(skb, &fib, &cfg, &verdict, 1, 0);
	if (rc < 0 || !cfg)
		return verdict;
	/* only the container's own address: a spoofed source meets the stack's rules */
	iph = (void *)(long)skb->data + sizeof(struct ethhdr);
	if ((void *)(iph + 1) > (void *)(long)skb->data_end)
		return count(CN_PASS_MALFORMED, TC_ACT_OK);
	source = bpf_map_lookup_elem(&cn_veths, &in);
	if (!source || *source != iph->saddr)
		return count(CN_PASS_SOURCE, TC_ACT_OK);
	local = veth_of(fib.ifindex, iph->daddr);  /* a container of this host, of this network */
	if (fib.ifindex != cfg->underlay && (!cfg->vxlan || fib.ifindex != cfg->vxlan) && !local)
		return count(CN_PASS_TARGET, TC_ACT_OK);
	if (decrease_ttl(skb) < 0)
		return count(CN_PASS_MALFORMED, TC_ACT_OK);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		/* the FIB resolved the next hop's MAC already: write it and hand the packet to
		 * the egress device (bpf_redirect_neigh would look the neighbour up again);
		 * a container on this host: straight into it (its veth peer's ingress) */
		if (set_macs(skb, &fib) < 0)
			return count(CN_PASS_MALFORMED, TC_ACT_OK);
		if (local) {
			count(CN_REDIRECT_PEER, 0);
			return bpf_redirect_peer(fib.ifindex, 0);
		}
		if (cfg->vxlan && fib.ifindex == cfg->vxlan) {
			verdict = encap(skb, &fib, cfg);
			if (verdict >= 0)
				return verdict;
		}
		count(CN_REDIRECT_NEIGH, 0);
		return bpf_redirect(fib.ifindex, 0);
	}
	/* next hop not resolved yet: the kernel's neighbour code resolves it (ARP) */
	nh.nh_family = AF_INET;
	nh.ipv4_nh = fib.ipv4_dst; /* the next hop the FIB chose */
	count(CN_REDIRECT_NEIGH, 0);
	return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}

SEC("tc")
int cn_to_container(struct __sk_buff *skb)
{
	struct bpf_fib_lookup fib;
	struct cn_config *cfg = NULL;
	struct iphdr *iph;
	int verdict;

	verdict = decap(skb);
	if (verdict >= 0)
		return verdict;
	if (route(skb, &fib, &cfg, &verdict, 0, 0) < 0 || !cfg)
		return verdict;
	iph = (void *)(long)skb->data + sizeof(struct ethhdr);
	if ((void *)(iph + 1) > (void *)(long)skb->data_end)
		return count(CN_PASS_MALFORMED, TC_ACT_OK);
	if (!veth_of(fib.ifindex, iph->daddr))
		return count(CN_PASS_TARGET, TC_ACT_OK);
	if (decrease_ttl(skb) < 0)
		return count(CN_PASS_MALFORMED, TC_ACT_OK);
	/* the neighbour the FIB resolved: the container's MAC, from the host veth's */
	if (set_macs(skb, &fib) < 0)
		return count(CN_PASS_MALFORMED, TC_ACT_OK);
	count(CN_REDIRECT_PEER, 0);
	return bpf_redirect_peer(fib.ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
