// SPDX-License-Identifier: GPL-2.0
/*
 * siov_dmacheck: a small dmaengine client for siov's guest test (Debian kernels do not build
 * dmatest). On load it takes a DMA_MEMCPY channel, runs `copies` copies of `size` bytes, each
 * from a freshly patterned source into a poisoned destination through the streaming DMA API
 * (so with a vIOMMU every copy maps and unmaps IOVAs), waits for each completion callback and
 * compares the destination byte for byte. It prints one verdict line:
 *   siov_dmacheck: RESULT copies=N verified=M failed=F size=S ns=T channel=NAME
 * and stays loaded (the test only reads the console).
 */
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/dmaengine.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/slab.h>

static unsigned int copies = 2000;
module_param(copies, uint, 0444);
static unsigned int size = 4096;
module_param(size, uint, 0444);
static unsigned int timeout_ms = 5000;
module_param(timeout_ms, uint, 0444);

struct siov_dmacheck_wait {
	struct completion done;
	enum dmaengine_tx_result result;
};

/* idxd reports each descriptor's completion status here (its tx_status cannot tell). */
static void siov_dmacheck_done(void *arg, const struct dmaengine_result *res)
{
	struct siov_dmacheck_wait *wait = arg;

	wait->result = res ? res->result : DMA_TRANS_NOERROR;
	complete(&wait->done);
}

static int one_copy(struct dma_chan *chan, u8 *src, u8 *dst, unsigned int n)
{
	struct device *dev = chan->device->dev;
	struct dma_async_tx_descriptor *tx;
	struct siov_dmacheck_wait wait;
	dma_addr_t s, d;
	dma_cookie_t cookie;
	unsigned int i;
	int ret = 0;

	for (i = 0; i < size; i++)
		src[i] = (u8)(n * 31 + i * 7 + (i >> 8));
	memset(dst, 0xa5, size);
	s = dma_map_single(dev, src, size, DMA_TO_DEVICE);
	if (dma_mapping_error(dev, s))
		return -ENOMEM;
	d = dma_map_single(dev, dst, size, DMA_FROM_DEVICE);
	if (dma_mapping_error(dev, d)) {
		dma_unmap_single(dev, s, size, DMA_TO_DEVICE);
		return -ENOMEM;
	}
	tx = dmaengine_prep_dma_memcpy(chan, d, s, size, DMA_PREP_INTERRUPT | DMA_CTRL_ACK);
	if (!tx) {
		ret = -EIO;
		goto out;
	}
	init_completion(&wait.done);
	wait.result = DMA_TRANS_ABORTED;
	tx->callback_result = siov_dmacheck_done;
	tx->callback_param = &wait;
	cookie = dmaengine_submit(tx);
	if (dma_submit_error(cookie)) {
		ret = -EIO;
		goto out;
	}
	dma_async_issue_pending(chan);
	if (!wait_for_completion_timeout(&wait.done, msecs_to_jiffies(timeout_ms))) {
		ret = -ETIMEDOUT;
		goto out;
	}
	if (wait.result != DMA_TRANS_NOERROR)
		ret = -EIO;
out:
	dma_unmap_single(dev, d, size, DMA_FROM_DEVICE);
	dma_unmap_single(dev, s, size, DMA_TO_DEVICE);
	if (!ret && memcmp(src, dst, size))
		ret = -EILSEQ;
	return ret;
}

static int __init siov_dmacheck_init(void)
{
	dma_cap_mask_t mask;
	struct dma_chan *chan;
	unsigned int n, verified = 0, failed = 0;
	u8 *src, *dst;
	ktime_t start;
	s64 ns;
	int ret, first_err = 0;

	dma_cap_zero(mask);
	dma_cap_set(DMA_MEMCPY, mask);
	chan = dma_request_channel(mask, NULL, NULL);
	if (!chan) {
		pr_err("siov_dmacheck: RESULT no-channel\n");
		return 0;
	}
	src = kmalloc(size, GFP_KERNEL);
	dst = kmalloc(size, GFP_KERNEL);
	if (!src || !dst) {
		pr_err("siov_dmacheck: RESULT no-memory\n");
		goto out;
	}
	start = ktime_get();
	for (n = 0; n < copies; n++) {
		ret = one_copy(chan, src, dst, n);
		if (ret) {
			failed++;
			if (!first_err) {
				first_err = ret;
				pr_err("siov_dmacheck: copy %u failed: %d\n", n, ret);
			}
			if (ret == -ETIMEDOUT)
				break;
		} else {
			verified++;
		}
	}
	ns = ktime_to_ns(ktime_sub(ktime_get(), start));
	pr_notice("siov_dmacheck: RESULT copies=%u verified=%u failed=%u size=%u ns=%lld channel=%s\n",
		copies, verified, failed, size, ns, dma_chan_name(chan));
out:
	kfree(src);
	kfree(dst);
	dma_release_channel(chan);
	return 0;
}

static void __exit siov_dmacheck_exit(void)
{
}

module_init(siov_dmacheck_init);
module_exit(siov_dmacheck_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("dmaengine memcpy check for siov's guest test");
