/**
 * Schema errors in words (src/model/validate.ts ajvWords): what API answers and content checks say
 * instead of Ajv's own phrasing ("must NOT have more than 16 characters", "must be integer").
 */
import { describe, expect, it } from 'vitest';
import { ajvWords, validateValue } from '../src/model/validate.js';

describe('ajvWords', () => {
  it.each([
    ['maxLength', { limit: 16 }, 'must be at most 16 characters long'],
    ['maxLength', { limit: 1 }, 'must be at most 1 character long'],
    ['minLength', { limit: 1 }, 'must not be empty'],
    ['minLength', { limit: 8 }, 'must be at least 8 characters long'],
    ['maxItems', { limit: 3 }, 'must have at most 3 items'],
    ['minItems', { limit: 1 }, 'must not be empty (give at least one)'],
    ['minItems', { limit: 2 }, 'must have at least 2 items'],
    ['maxProperties', { limit: 1000 }, 'must have at most 1000 entries'],
    ['minProperties', { limit: 1 }, 'must not be empty'],
    ['type', { type: 'integer' }, 'must be an integer'],
    ['type', { type: 'string' }, 'must be a string'],
    ['type', { type: ['string', 'null'] }, 'must be a string or null'],
    ['type', { type: 'object,array' }, 'must be an object or an array'],
    ['maximum', { limit: 10, comparison: '<=' }, 'must be <= 10'],
  ])('%s %o → %s', (keyword, params, want) => {
    expect(ajvWords(keyword, params, keyword === 'maximum' ? 'must be <= 10' : undefined)).toBe(want);
  });

  it('falls back to the given message, else "is invalid"', () => {
    expect(ajvWords('const', {}, 'must be equal to constant')).toBe('must be equal to constant');
    expect(ajvWords('const', {})).toBe('is invalid');
  });

  it('is what validateValue says', () => {
    expect(validateValue({ type: 'string', maxLength: 3 }, 'abcd')).toEqual([{ path: '', message: 'must be at most 3 characters long' }]);
    expect(validateValue({ type: 'integer' }, 'two')).toEqual([{ path: '', message: 'must be an integer' }]);
    expect(validateValue({ type: 'object', properties: { n: { type: 'string', minLength: 1 } } }, { n: '' })).toEqual([{ path: '/n', message: 'must not be empty' }]);
  });
});
