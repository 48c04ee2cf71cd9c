// Every text is new: each one carries a unique tag, so the cache never answers.
//   k6 run -e VUS=16 -e TEXTS_PER_REQUEST=1 -e DURATION=30s loadtest/uncached.js
import { loadSentences, predict, chooseRunOffset, freshTexts } from './lib.js';
import { SharedArray } from 'k6/data';

const sentences = new SharedArray('sentences', loadSentences);
const TEXTS = parseInt(__ENV.TEXTS_PER_REQUEST || '1', 10);

export const options = {
  scenarios: {
    uncached: { executor: 'constant-vus', vus: parseInt(__ENV.VUS || '8', 10), duration: __ENV.DURATION || '20s' },
  },
  thresholds: { checks: ['rate>0.99'] },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(50)', 'p(95)', 'p(99)'],
};

// Each run passes a different RUN_OFFSET so no run meets another's cached texts; setup() gives
// every VU the same one (see chooseRunOffset in lib.js).
export function setup() {
  return { runOffset: chooseRunOffset() };
}

export default function (data) {
  predict(freshTexts(sentences, data.runOffset, '', TEXTS, TEXTS));
}
