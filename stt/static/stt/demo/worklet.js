// Fasttalk demo: the audio-thread half. Takes the microphone at the AudioContext's
// rate (usually 48 kHz), mixes it to mono, low-passes and resamples it to 16 kHz, and
// posts float32 frames of `frameSamples` to the page, which sends them as they are.

// Band-limited resampling with a windowed-sinc (Blackman) low-pass evaluated at each
// output sample's fractional input position: works for any pair of rates (48 kHz,
// 44.1 kHz, ...) and removes what lies above 90 % of the output's Nyquist frequency
// (7.2 kHz at 16 kHz) before it can alias.
class Resampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate; // input samples per output sample
    const cutoff = 0.45 * Math.min(1, outRate / inRate); // cycles per input sample
    this.halfWidth = Math.ceil(8 / (2 * cutoff)); // 8 zero crossings each side, in input samples
    this.resolution = 64; // kernel table points per input sample
    const points = this.halfWidth * this.resolution;
    this.table = new Float32Array(points + 2);
    for (let n = 0; n <= points; n++) {
      const d = n / this.resolution;
      const x = 2 * cutoff * d;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const window = 0.42 + 0.5 * Math.cos(Math.PI * d / this.halfWidth) + 0.08 * Math.cos(2 * Math.PI * d / this.halfWidth);
      this.table[n] = sinc * window;
    }
    this.buffer = new Float32Array(4096); // input samples still needed
    this.length = 0;
    this.offset = 0; // absolute input index of buffer[0]
    this.position = 0; // absolute input position of the next output sample
  }

  kernel(distance) {
    const at = distance * this.resolution;
    const i = at | 0;
    const frac = at - i;
    return this.table[i] * (1 - frac) + this.table[i + 1] * frac;
  }

  // Appends input samples; calls emit(sample) for every output sample now computable.
  push(samples, emit) {
    if (this.length + samples.length > this.buffer.length) {
      const bigger = new Float32Array(2 * (this.length + samples.length));
      bigger.set(this.buffer.subarray(0, this.length));
      this.buffer = bigger;
    }
    this.buffer.set(samples, this.length);
    this.length += samples.length;
    const end = this.offset + this.length;
    while (Math.floor(this.position + this.halfWidth) < end) {
      const first = Math.max(this.offset, Math.ceil(this.position - this.halfWidth));
      const last = Math.floor(this.position + this.halfWidth);
      let sum = 0;
      let weights = 0;
      for (let i = first; i <= last; i++) {
        const w = this.kernel(Math.abs(this.position - i));
        sum += w * this.buffer[i - this.offset];
        weights += w;
      }
      emit(sum / weights); // normalized: unity gain at DC whatever the phase
      this.position += this.step;
    }
    const keep = Math.max(this.offset, Math.ceil(this.position - this.halfWidth));
    const drop = keep - this.offset;
    if (drop > 0) {
      this.buffer.copyWithin(0, drop, this.length);
      this.length -= drop;
      this.offset = keep;
    }
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, frameSamples } = options.processorOptions;
    this.resampler = new Resampler(sampleRate, targetRate);
    this.frameSamples = frameSamples;
    this.frame = new Float32Array(frameSamples);
    this.filled = 0;
    this.running = true;
    this.emit = (sample) => {
      this.frame[this.filled++] = sample;
      if (this.filled === this.frameSamples) this.post();
    };
    this.port.onmessage = (event) => {
      if (event.data === "stop") { // send what is left, then stop processing
        if (this.filled > 0) this.post();
        this.running = false;
      }
    };
  }

  post() {
    const frame = this.frame.slice(0, this.filled);
    this.port.postMessage(frame, [frame.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!this.running) return false;
    if (channels.length === 0) return true; // no input connected yet
    let mono = channels[0];
    if (channels.length > 1) {
      mono = new Float32Array(mono.length);
      for (const channel of channels) for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
    }
    this.resampler.push(mono, this.emit);
    return true;
  }
}

registerProcessor("fasttalk-capture", CaptureProcessor);
